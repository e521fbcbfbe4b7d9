"""The ``opa`` authorization engine: Rego policies, embedded or on an OPA server.

Section ``[sites.NAME.opa]`` (every key in docs/opa.md). Exactly one of:

- ``policies``: ``.rego`` files or directories (their ``*.rego`` files), relative to
  the config file, evaluated in-process with regopy (rego-cpp) and re-read when they
  change (checked every ``poll_interval``, default ``1s``);
- ``url``: an OPA server asked over its REST data API (``timeout`` default ``1s``,
  which must be below the site's ``authz_timeout``; ``retries`` default ``1``;
  ``max_connections`` default ``8``).

``path`` (default ``envoy/authz/allow``, opa-envoy-plugin's) names the rule; it
returns a boolean or ``{allowed, reason}``. The input document is
:func:`gwcore.policy.opa_input.build_input`.

Failure rules:

- An error, timeout or undefined result is a **deny** naming the cause (fail
  closed). With ``fail_open = true`` it is an allow instead, logged as a warning and
  counted in ``tgw_opa_fail_open_total``.
- A policy set that fails to compile is logged with file, line and column and
  counted; the previous policy stays in force. With no policy ever compiled every
  evaluation is an error (so, fail closed). ``tgw check-config`` reports such files.
- ``shadow = true``: the policy is evaluated and counted
  (``tgw_opa_shadow_decisions_total``) but the engine abstains, so the other engines
  and the site's ``default_policy`` decide as if OPA were absent.
- ``dry_run = true`` (opa-envoy-plugin's ``dry-run``): a deny is logged and counted
  (``tgw_opa_dry_run_allowed_total``) and the engine allows instead; errors stay
  errors. At most one of ``shadow`` and ``dry_run``.

Decisions are cached per (policy version, whole input document) for ``cache_ttl``
(default ``5s``; ``0`` turns the cache off), at most ``cache_size`` entries: a policy
may read any field, the client port included, so nothing less is a safe key. A
policy change bumps ``policy_version``, empties the cache and calls the site's
``changed`` callback (open connections are re-checked); a catalog change empties it
too. Errors are never cached. In remote mode the policy lives on the server, so only
the TTL bounds how long a cached answer outlives a server-side change.

Embedded evaluation runs in the reactor thread: a regopy ``Interpreter`` holds the
input as state (``set_input`` then ``query``) and its calls release the GIL, so it
must never be shared between threads; one compiled policy is used by the reactor
thread only. One evaluation costs about 0.3-0.5 ms (mostly converting the input), a
cache hit tens of microseconds (building and serialising the document, its key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import CatalogView
from gwcore.net.filewatch import FileWatcher
from gwcore.plugins.opa_rego import (
    PATTERN,
    DecisionCache,
    PolicyRejectedError,
    RegoPolicy,
    policy_version,
    read_sources,
)
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.model import Decision, Verdict
from gwcore.policy.opa_input import Evaluation, build_input, cache_key, rule_name, valid_path

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gwcore.contract.providers import AuthorizationEngine, AuthzRequest, SiteContext

NAME = "opa"
DEFAULT_PATH = "envoy/authz/allow"
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_RETRIES = 1
DEFAULT_MAX_CONNECTIONS = 8
DEFAULT_CACHE_TTL = 5.0
DEFAULT_CACHE_SIZE = 10_000

_URL_RE = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?$")
_EVALUATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5)


# --- settings ------------------------------------------------------------------------


def stack_entry(site: SiteConfig) -> str | None:
    """The name this plugin has in the site's stack (its section's name), if any."""
    return site.stack_name(NAME, __name__)


@dataclass(frozen=True, slots=True)
class OpaSettings:
    """The section, read. ``policies`` are as written (possibly relative)."""

    policies: tuple[str, ...]
    url: str | None
    path: str
    fail_open: bool
    shadow: bool
    dry_run: bool
    include_peer_certificate: bool
    cache_ttl: float
    cache_size: int
    poll_interval: float
    timeout: float
    retries: int
    max_connections: int

    @property
    def remote(self) -> bool:
        return self.url is not None


def read_settings(site: SiteConfig, entry: str) -> tuple[OpaSettings, list[ConfigProblem]]:
    """Read ``[sites.NAME.<entry>]``; a problem for each bad or unknown key (no file I/O)."""
    reader = site.reader(entry)
    table = reader.table
    policies = reader.strings("policies")
    url = (  # a password or ?token= would be shown by /config and in every denial
        reader.string("url", pattern=_URL_RE, what="an http:// or https:// URL")
        if reader.credential_free_url("url")
        else None
    )
    if ("policies" in table) == ("url" in table):
        reader.problem(
            "policies",
            "give exactly one of policies (embedded Rego) or url (an OPA server)",
        )
    elif "policies" in table and not policies and not reader.problems:
        reader.problem("policies", "must name at least one file or directory")
    path = reader.string("path", DEFAULT_PATH) or DEFAULT_PATH
    if not valid_path(path):
        reader.problem("path", f"{path!r} is not a rule path like {DEFAULT_PATH!r}")
        path = DEFAULT_PATH
    if "url" in table and "poll_interval" in table:
        reader.problem("poll_interval", "only applies to embedded policies")
    if "policies" in table:
        for key in ("timeout", "retries", "max_connections"):
            if key in table:
                reader.problem(key, "only applies to a remote OPA (url)")
    timeout = reader.duration("timeout", DEFAULT_TIMEOUT, minimum=0.001)
    if "url" in table and timeout >= site.authz_timeout:
        reader.problem(
            "timeout",
            f"must be below the site's authz_timeout ({site.authz_timeout:g}s), or the site "
            "times the engine out first and fail_open never applies",
        )
    if table.get("shadow") is True and table.get("dry_run") is True:
        reader.problem(
            "dry_run",
            "give at most one of shadow (abstain) and dry_run (allow what the policy denies)",
        )
    settings = OpaSettings(
        policies=policies,
        url=url if "url" in table else None,
        path=path,
        fail_open=reader.boolean("fail_open", False),
        shadow=reader.boolean("shadow", False),
        dry_run=reader.boolean("dry_run", False),
        include_peer_certificate=reader.boolean("include_peer_certificate", False),
        cache_ttl=reader.duration("cache_ttl", DEFAULT_CACHE_TTL),
        cache_size=reader.integer("cache_size", DEFAULT_CACHE_SIZE, minimum=1),
        poll_interval=reader.duration("poll_interval", DEFAULT_POLL_INTERVAL, minimum=0.05),
        timeout=timeout,
        retries=reader.integer("retries", DEFAULT_RETRIES, minimum=0, maximum=5),
        max_connections=reader.integer(
            "max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1, maximum=1000
        ),
    )
    return settings, reader.finish()


# --- embedded policies ---------------------------------------------------------------


def check_policies(site: SiteConfig, entry: str, settings: OpaSettings) -> list[ConfigProblem]:
    """Problems with the policy files themselves (for ``tgw check-config``)."""
    key = f"{site.prefix}.{entry}.policies"
    paths = [site.base_dir / p for p in settings.policies]
    problems = [
        ConfigProblem(site.file, key, f"{str(p)!r} does not exist") for p in paths if not p.exists()
    ]
    if problems:
        return problems
    try:
        RegoPolicy(read_sources(paths), settings.path)
    except PolicyRejectedError as e:
        problems += [ConfigProblem(site.file, key, str(p)) for p in e.problems]
    return problems


# --- the engine ----------------------------------------------------------------------


class _Metrics:
    def __init__(self, site: SiteContext) -> None:
        m, s = site.metrics, site.name
        self.decisions = m.family(
            Counter,
            "tgw_opa_decisions",
            "What enforced OPA policies decided per connection (allow, deny, error).",
            ["site", "decision"],
        )
        self.shadow = m.family(
            Counter,
            "tgw_opa_shadow_decisions",
            "What a shadow-mode OPA policy would have decided (not enforced).",
            ["site", "decision"],
        )
        self.errors = m.family(
            Counter,
            "tgw_opa_errors",
            "OPA evaluations that gave no decision, by kind (undefined, bad_result, "
            "evaluation, no_policy, timeout, unavailable, http_status, bad_response).",
            ["site", "kind"],
        )
        self.fail_open = m.family(
            Counter,
            "tgw_opa_fail_open",
            "Connections allowed only because OPA failed and fail_open is set.",
            ["site"],
        ).labels(site=s)
        self.dry_run = m.family(
            Counter,
            "tgw_opa_dry_run_allowed",
            "Connections an OPA policy denied that dry_run allowed (would-deny).",
            ["site"],
        ).labels(site=s)
        self.cache = m.family(
            Counter,
            "tgw_opa_cache_lookups",
            "Decision cache lookups (result hit or miss).",
            ["site", "result"],
        )
        self.reloads = m.family(
            Counter,
            "tgw_opa_policy_reloads",
            "Embedded policy loads, by result (applied, rejected).",
            ["site", "result"],
        )
        self.seconds = m.family(
            Histogram,
            "tgw_opa_evaluation_seconds",
            "Time to evaluate a policy (cache misses only), by mode (embedded, remote).",
            ["site", "mode"],
            buckets=_EVALUATION_BUCKETS,
        )
        self.site = s


class OpaEngine:
    """An :class:`~gwcore.contract.providers.AuthorizationEngine` asking Rego."""

    name = NAME

    def __init__(self, site: SiteContext, settings: OpaSettings) -> None:
        self._site = site
        self._settings = settings
        # The site copies the client's certificate into requests only when asked.
        self.wants_peer_certificate = settings.include_peer_certificate
        self._log = site.log
        self._metrics = _Metrics(site)
        self._mode = "remote" if settings.remote else "embedded"
        self._timer = self._metrics.seconds.labels(site=site.name, mode=self._mode)
        self._cache = DecisionCache(settings.cache_ttl, settings.cache_size)
        self._changed: Callable[[], None] | None = None
        self._policy: RegoPolicy | None = None
        self._last_problem = "no policy loaded yet"
        self._client: Any = None
        self._watcher: FileWatcher | None = None
        if settings.remote:
            from gwcore.net.opa_client import OpaClient

            assert settings.url is not None
            self._client = OpaClient(
                site.reactor,
                settings.url,
                timeout=settings.timeout,
                max_connections=settings.max_connections,
                retries=settings.retries,
            )
            self._remote_version = policy_version({settings.url: ""}, settings.path)
        else:
            self._paths = [site.resolve_path(p) for p in settings.policies]
            self._watcher = FileWatcher(
                site.reactor,
                self._paths,
                self.reload,
                interval=settings.poll_interval,
                pattern=PATTERN,
            )
        site.subscribe_catalog(self._on_catalog)

    @property
    def policy_version(self) -> str:
        if self._client is not None:
            return self._remote_version
        return self._policy.version if self._policy is not None else ""

    def start(self, changed: Callable[[], None]) -> None:
        if self._watcher is not None:
            self._watcher.start()  # first, so a change made while reading is seen later
            self.reload()
        self._changed = changed  # after the first load: nothing is open to re-check yet

    def stop(self) -> Deferred[None] | None:
        self._changed = None
        if self._watcher is not None:
            self._watcher.stop()
        if self._client is not None:
            return self._client.close()
        return None

    # --- policy loading (embedded) ---------------------------------------------------

    def reload(self) -> bool:
        """Re-read and compile the policy files; True when a new policy went live."""
        try:
            sources = read_sources(self._paths)
            if self._policy is not None and self._policy.version == policy_version(
                sources, self._settings.path
            ):
                return False
            policy = RegoPolicy(sources, self._settings.path)
        except PolicyRejectedError as e:
            self._metrics.reloads.labels(site=self._metrics.site, result="rejected").inc()
            kept = "the previous policy stays in force" if self._policy else "no policy in force"
            self._last_problem = f"policy rejected: {e}"
            for problem in e.problems:
                self._log.error(
                    "OPA policy rejected ({kept}): {problem}", kept=kept, problem=str(problem)
                )
            return False
        self._policy = policy
        self._cache.clear()
        self._metrics.reloads.labels(site=self._metrics.site, result="applied").inc()
        self._log.info(
            "OPA policy {version} in force ({files}), rule {rule}",
            version=policy.version,
            files=", ".join(policy.files),
            rule=rule_name(policy.path),
        )
        if self._changed is not None:
            self._changed()
        return True

    def _on_catalog(self, view: CatalogView) -> None:
        self._cache.clear()  # destination metadata is part of the input

    # --- deciding ----------------------------------------------------------------------

    def authorize(self, request: AuthzRequest) -> Decision | Deferred[Decision]:
        document = self._document(request)
        # The whole input document is the key: a policy may read any of it (the client
        # address and port included), so nothing less can be proven to give the same
        # answer.
        key = (self.policy_version, cache_key(document))
        now = self._site.reactor.seconds()
        cached = self._cache.get(key, now)
        if cached is not None:
            self._metrics.cache.labels(site=self._metrics.site, result="hit").inc()
            return self._decide(request, cached)
        self._metrics.cache.labels(site=self._metrics.site, result="miss").inc()
        if self._client is None:
            with self._timer.time():
                evaluation = self._evaluate_embedded(document)
            return self._evaluated(request, key, evaluation)
        started = self._site.reactor.seconds()

        def answered(evaluation: Evaluation) -> Decision:
            self._timer.observe(max(0.0, self._site.reactor.seconds() - started))
            return self._evaluated(request, key, evaluation)

        d: Deferred[Evaluation] = self._client.evaluate(self._settings.path, document)
        return d.addCallback(answered)

    def _document(self, request: AuthzRequest) -> dict[str, Any]:
        return build_input(
            site=request.site,
            gateway_name=request.gateway_name,
            datacenter=request.datacenter,
            trust_domain=self._site.config.trust_domain,
            source=request.source,
            destination=request.destination,
            sni=request.sni,
            client_address=request.client_address,
            client_port=request.client_port,
            gateway_address=request.gateway_address,
            gateway_port=request.gateway_port,
            requested_server_name=request.requested_server_name,
            peer_certificate_pem=self._peer_pem(request),
            http=request.http,
        )

    def _peer_pem(self, request: AuthzRequest) -> str | None:
        if not (self._settings.include_peer_certificate and request.peer_certificate):
            return None
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        certificate = x509.load_der_x509_certificate(request.peer_certificate)
        return certificate.public_bytes(Encoding.PEM).decode("ascii")

    def _evaluate_embedded(self, document: Mapping[str, Any]) -> Evaluation:
        if self._policy is None:
            return Evaluation.error("no_policy", self._last_problem)
        return self._policy.evaluate(document)

    def _evaluated(self, request: AuthzRequest, key: tuple, evaluation: Evaluation) -> Decision:
        if not evaluation.failed and key[0] == self.policy_version:
            self._cache.put(key, evaluation, self._site.reactor.seconds())
        if evaluation.failed:
            self._metrics.errors.labels(site=self._metrics.site, kind=evaluation.error_kind).inc()
        return self._decide(request, evaluation)

    def _decide(self, request: AuthzRequest, evaluation: Evaluation) -> Decision:
        outcome = "error" if evaluation.failed else "allow" if evaluation.allowed else "deny"
        site = self._metrics.site
        if self._settings.shadow:
            self._metrics.shadow.labels(site=site, decision=outcome).inc()
            if outcome != "allow":
                self._log.info(
                    "OPA shadow mode: would {outcome} {source} -> {destination}: {reason}",
                    outcome=outcome,
                    source=request.source.uri,
                    destination=request.destination.name,
                    reason=evaluation.reason,
                )
            return Decision(
                Verdict.ABSTAIN, NAME, f"shadow mode, would {outcome}: {evaluation.reason}"
            )
        self._metrics.decisions.labels(site=site, decision=outcome).inc()
        if self._settings.dry_run and outcome == "deny":
            # opa-envoy-plugin's dry-run: the deny is logged and counted, the connection
            # allowed. Errors stay errors (the plugin answers Envoy with an error).
            self._metrics.dry_run.inc()
            self._log.info(
                "OPA dry-run: would deny {source} -> {destination}: {reason}",
                source=request.source.uri,
                destination=request.destination.name,
                reason=evaluation.reason,
            )
            return Decision(Verdict.ALLOW, NAME, f"dry-run, would deny: {evaluation.reason}")
        if not evaluation.failed:
            verdict = Verdict.ALLOW if evaluation.allowed else Verdict.DENY
            return Decision(verdict, NAME, evaluation.reason)
        if self._settings.fail_open:
            self._metrics.fail_open.inc()
            self._log.warn(
                "OPA failed open for {source} -> {destination}: {reason}",
                source=request.source.uri,
                destination=request.destination.name,
                reason=evaluation.reason,
            )
            return Decision(Verdict.ALLOW, NAME, f"fail-open: {evaluation.reason}")
        return Decision(Verdict.DENY, NAME, f"fail-closed: {evaluation.reason}")


# --- hooks ---------------------------------------------------------------------------


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    """Check the section and, for embedded policies, that every file compiles."""
    entry = stack_entry(site)
    if entry is None:
        return []
    settings, problems = read_settings(site, entry)
    if not problems and not settings.remote:
        problems += check_policies(site, entry, settings)
    return problems


@hookimpl
def tgw_authorization_engines(site: SiteContext) -> Sequence[AuthorizationEngine]:
    entry = stack_entry(site.config)
    if entry is None:
        return []
    settings, _ = read_settings(site.config, entry)  # validated before the site starts
    return [OpaEngine(site, settings)]
