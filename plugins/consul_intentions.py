"""The ``consul_intentions`` plugin: Consul's intentions, evaluated locally by the one engine.

Section ``[sites.NAME.consul_intentions]``: the connection keys of
:func:`gwcore.net.consul.read_consul_settings` (see ``docs/consul.md``).

How the pieces fit (one precedence engine, two sources):

- A **catalog source** that publishes no destinations, only intentions. It follows
  the site's merged catalog (whatever source supplies the linked services) and keeps
  one blocking query per namespace and partition of the routed services,
  ``/v1/connect/intentions/match?by=destination&name=<a>&name=<b>..[&ns=..&partition=..]``
  (``name`` is repeatable, reference §5), re-opened when the set of services changes.
  Each match item is turned back into a ``service-intentions`` source and read by
  :mod:`gwcore.policy.consul_shapes`, so the intentions reach the ``intentions`` engine
  exactly as file-based ones do. ``/v1/agent/connect/authorize`` is never called.
- The **``intentions`` engine** (:mod:`gwcore.plugins.intentions`) decides, with
  :class:`gwcore.policy.intentions.IntentionSet`. This plugin supplies one when the
  stack does not name ``intentions`` itself, so ``[consul_catalog, consul_certs,
  consul_intentions]`` is a complete stack.
- A **guard engine** (``consul_intentions``) that denies a connection to a service whose
  intentions have not been read from Consul yet (a service linked a moment ago, or
  Consul unreachable since start) and abstains otherwise. Without it a freshly linked
  service would fall through to ``default_policy`` before its deny intentions arrived.

- **The default decision** (no intention matches) follows the agent, as Consul's
  authorize endpoint does (:mod:`gwcore.policy.consul_default`): read once from
  ``/v1/agent/self`` at start (``default_intention_policy``, else the ACL default,
  allow when ACLs are off) and logged. Until it is read, and when it cannot be read,
  the guard denies. The section key ``default_policy`` overrides it: ``"consul"``
  (the default), ``"allow"`` or ``"deny"`` (fixed, the agent is not asked), or
  ``"site"`` (the guard abstains and the site's ``default_policy`` decides).

When Consul fails, the last intentions read stay in force.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import AuthzRequest, CatalogView, SourceHealth
from gwcore.net.consul import (
    BlockingWatch,
    ConsulClient,
    ConsulError,
    ConsulFreshness,
    ConsulResponse,
    ConsulSettings,
    acquire_client,
    backoff_delay,
    connection_problems,
    read_consul_settings,
    release_client,
)
from gwcore.net.consul_watch import scope_query
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.consul_default import UNREAD, AgentDefault, agent_default
from gwcore.policy.consul_shapes import build_intentions, parse_documents
from gwcore.policy.intentions import IntentionSet
from gwcore.policy.model import CatalogSnapshot, Decision, Intention, ServiceName, Verdict

if TYPE_CHECKING:
    from gwcore.contract.providers import AuthorizationEngine, CatalogSource, SiteContext

NAME = "consul_intentions"
MODULE = "gwcore.plugins.consul_intentions"
ORIGIN = "consul intentions/match"


def stack_entry(plugins: Sequence[str]) -> str | None:
    """The name this plugin has in a stack: its built-in name or its module path."""
    return next((entry for entry in (NAME, MODULE) if entry in plugins), None)


DEFAULT_MODES = ("consul", "allow", "deny", "site")


@dataclass(frozen=True, slots=True)
class Settings:
    consul: ConsulSettings
    default_policy: str = "consul"


def read_settings(site: SiteConfig, entry: str) -> tuple[Settings, list[ConfigProblem]]:
    reader = site.reader(entry)
    consul = read_consul_settings(reader, site.base_dir)
    mode = reader.string("default_policy", "consul", choices=DEFAULT_MODES) or "consul"
    if mode == "site" and site.default_policy == "consul":
        reader.problem("default_policy", '"site" while the site\'s default_policy is "consul"')
    connection_problems(reader, consul)
    return Settings(consul, mode), reader.finish()


def intentions_from_match(
    body: Any, origin: str = ORIGIN
) -> tuple[tuple[Intention, ...], list[str]]:
    """Intentions from an ``intentions/match`` answer, and problems with items left out.

    Each item becomes a one-source ``service-intentions`` entry read by the shared
    parser; an item it rejects (a peer source, say) is left out and reported. An item
    listed under several queried names (a wildcard destination) counts once.
    """
    if not isinstance(body, dict):
        raise ValueError("intentions/match: expected an object keyed by service name")
    seen: set[str] = set()
    intentions: list[Intention] = []
    problems: list[str] = []
    for name in sorted(body):
        items = body[name]
        if not isinstance(items, list):
            raise ValueError(f"intentions/match: {name!r} is not a list")
        for item in items:
            if not isinstance(item, dict):
                problems.append(f"{name}: an item is not an object")
                continue
            source: dict[str, Any] = {
                "Name": item.get("SourceName"),
                "Namespace": item.get("SourceNS"),
                "Partition": item.get("SourcePartition"),
                "Peer": item.get("SourcePeer"),
                "SamenessGroup": item.get("SourceSamenessGroup"),
                "Type": item.get("SourceType"),
                "Description": item.get("Description"),
                "Precedence": item.get("Precedence"),
            }
            if item.get("Permissions"):
                source["Permissions"] = item["Permissions"]
            else:
                source["Action"] = item.get("Action")
            entry = {
                "Kind": "service-intentions",
                "Name": item.get("DestinationName"),
                "Namespace": item.get("DestinationNS"),
                "Partition": item.get("DestinationPartition"),
                "Sources": [{k: v for k, v in source.items() if v not in (None, "")}],
            }
            entry = {k: v for k, v in entry.items() if v not in (None, "")}
            key = repr(sorted((k, repr(v)) for k, v in entry.items()))
            if key in seen:
                continue
            seen.add(key)
            docs, found = parse_documents([(origin, entry)])
            if found:
                problems += [str(p) for p in found]
                continue
            intentions.extend(build_intentions(docs))
    return tuple(intentions), problems


def _order(service: ServiceName) -> tuple[str, str, str]:
    return (service.partition, service.namespace, service.name)


class ConsulIntentionsSource:
    """Publishes the intentions of every routed service, read from Consul."""

    name = NAME

    def __init__(self, site: SiteContext, entry: str | None = None) -> None:
        self._site = site
        entry = entry or stack_entry(site.config.plugins) or NAME
        self.settings, _ = read_settings(site.config, entry)
        self.client: ConsulClient | None = None
        self.freshness = ConsulFreshness(site, NAME)
        self._rng = random.Random()
        self._services: tuple[ServiceName, ...] | None = None
        self.loaded: frozenset[ServiceName] = frozenset()
        self._watches: dict[tuple[str, str], BlockingWatch] = {}
        self._results: dict[tuple[str, str], tuple[Intention, ...]] = {}
        self._publish: Callable[[CatalogSnapshot], None] | None = None
        self._version = ""
        self._reported: set[str] = set()
        self._running = False
        mode = self.settings.default_policy
        self.default = (
            AgentDefault(mode, "default_policy in the consul_intentions section")
            if mode in ("allow", "deny")
            else UNREAD
        )
        self._default_changed: Callable[[], None] | None = None
        self._self_call: Any = None
        self._self_failures = 0
        site.subscribe_catalog(self._on_catalog)

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> None:
        """Nothing to read until the site's catalog names services (see ``_on_catalog``)."""
        self._publish = publish
        self._running = True
        self.client = acquire_client(self._site.reactor, self.settings.consul)
        if self.settings.default_policy == "consul":
            self._read_default()
        elif self.settings.default_policy != "site":
            self._log_default()
        self._on_catalog(self._site.catalog_view())

    def _log_default(self) -> None:
        self._site.log.info(
            "consul_intentions: when no intention matches, the decision is {default}",
            default=str(self.default),
        )

    def _read_default(self) -> None:
        """Read the agent's default decision (retried with back-off until it answers)."""
        self._self_call = None
        if not self._running or self.client is None:
            return

        def done(response: ConsulResponse) -> None:
            self.default = agent_default(response.json())
            self.freshness.ok("agent-self")
            self._log_default()
            if self._default_changed is not None:
                self._default_changed()

        def failed(f: Any) -> None:
            if isinstance(f.value, ConsulError):
                self.freshness.failed(f.value)
            if not self._running:
                return
            self._self_failures += 1
            consul = self.settings.consul
            delay = backoff_delay(
                self._self_failures, consul.retry_min, consul.retry_max, self._rng
            )
            self._self_call = self._site.reactor.callLater(delay, self._read_default)

        self.client.get("agent-self", "/v1/agent/self").addCallbacks(done, failed)

    def stop(self) -> Deferred[None] | None:
        self._running = False
        for watch in self._watches.values():
            watch.stop()
        if self._self_call is not None and self._self_call.active():
            self._self_call.cancel()
        client, self.client = self.client, None
        return maybeDeferred(release_client, client) if client is not None else None

    def health(self) -> SourceHealth:
        return SourceHealth(self.freshness.last_success, self.freshness.error)

    def _on_catalog(self, view: CatalogView) -> None:
        if not self._running or self.client is None:
            return
        services = tuple(sorted({d.service for d in view.destinations}, key=_order))
        if services == self._services:
            return
        self._services = services
        for watch in self._watches.values():
            watch.stop()
        self._watches = {}
        self.loaded = self.loaded & frozenset(services)
        if not services:
            self._results = {}
            self._emit(())
            self.freshness.ok("intentions-match")
            return
        # One query per namespace and partition: ?ns= and ?partition= scope a query.
        groups: dict[tuple[str, str], list[str]] = {}
        for service in services:
            groups.setdefault((service.namespace, service.partition), []).append(service.name)
        self._results = {k: v for k, v in self._results.items() if k in groups}
        for scope, names in sorted(groups.items()):
            query = [("by", "destination"), *(("name", n) for n in names), *scope_query(*scope)]
            watch = BlockingWatch(
                self.client,
                "intentions-match",
                "/v1/connect/intentions/match",
                lambda r, scope=scope, names=tuple(names), current=services: self._on_match(
                    r, scope, names, current
                ),
                self.freshness.failed,
                query=query,
                on_ok=self.freshness.ok,
                rng=self._rng,
            )
            self._watches[scope] = watch
            watch.start()

    def _on_match(
        self,
        response: ConsulResponse,
        scope: tuple[str, str],
        names: tuple[str, ...],
        services: tuple[ServiceName, ...],
    ) -> None:
        if services != self._services:
            return  # an answer for a set of services we no longer route
        try:
            intentions, problems = intentions_from_match(response.json())
        except ValueError as e:
            raise ConsulError("intentions-match", "invalid", str(e)) from None
        for problem in problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self._site.log.error(
                    "consul_intentions: intention left out: {problem}", problem=problem
                )
        self.freshness.ok("intentions-match")
        self._results[scope] = intentions
        self.loaded = self.loaded | {ServiceName(n, *scope) for n in names}
        self._emit(tuple(i for key in sorted(self._results) for i in self._results[key]))

    def _emit(self, intentions: tuple[Intention, ...]) -> None:
        version = hashlib.sha256(repr(intentions).encode()).hexdigest()[:16]
        if version == self._version or self._publish is None:
            return
        self._version = version
        self._publish(CatalogSnapshot(source=NAME, intentions=intentions, version=version))


class IntentionsGuard:
    """Denies until a destination's intentions were read from Consul; then, when no
    intention matches, decides as the agent would (module docstring); abstains when one
    matches, leaving the match to the ``intentions`` engine."""

    name = NAME

    def __init__(self, source: ConsulIntentionsSource, site: SiteContext) -> None:
        self._source = source
        self._trust_domain = site.config.trust_domain
        self._set = IntentionSet(site.catalog_view().intentions)
        site.subscribe_catalog(self._on_catalog)

    def _on_catalog(self, view: CatalogView) -> None:
        self._set = IntentionSet(view.intentions)

    @property
    def policy_version(self) -> str:
        return f"guard:{self._source.settings.default_policy}:{self._source.default.policy}"

    def start(self, changed: Callable[[], None]) -> None:
        self._source._default_changed = changed

    def stop(self) -> None:
        self._source._default_changed = None

    def authorize(self, request: AuthzRequest) -> Decision:
        service = request.destination.service
        if service in self._source.loaded:
            if self._source.settings.default_policy == "site":
                return Decision(Verdict.ABSTAIN, NAME, "intentions loaded from Consul")
            if request.source.trust_domain != self._trust_domain:
                # Neither a local intention nor the agent's default speaks for a peer
                # identity (Consul names peers with Peer sources): the site's
                # default_policy decides, as with the intentions engine.
                return Decision(
                    Verdict.ABSTAIN,
                    NAME,
                    f"source {request.source.uri} is from trust domain "
                    f"{request.source.trust_domain}, not {self._trust_domain}",
                )
            # Per request (L7) a matching intention whose permissions all miss abstains,
            # so the agent's default decides, as Consul does.
            matched = self._set.decide(request.source.service, service, request.http)
            if matched.verdict is not Verdict.ABSTAIN:
                return Decision(Verdict.ABSTAIN, NAME, "an intention matches")
            default = self._source.default
            verdict = Verdict.ALLOW if default.policy == "allow" else Verdict.DENY
            return Decision(verdict, NAME, f"{matched.reason}; Consul default: {default}")
        return Decision(
            Verdict.DENY,
            NAME,
            f"intentions of {service} have not been read from Consul yet "
            f"({self._source.freshness.error or 'waiting for the first answer'})",
        )


_sources: dict[int, ConsulIntentionsSource] = {}


def _source_for(site: SiteContext) -> ConsulIntentionsSource:
    # Both provider hooks of one site must share the source; they are called in turn
    # while the site starts, with the same site object.
    source = _sources.get(id(site))
    if source is None or source._site is not site:
        entry = stack_entry(site.config.plugins) or NAME
        source = _sources[id(site)] = ConsulIntentionsSource(site, entry)
    return source


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    entry = stack_entry(site.plugins)
    return [] if entry is None else read_settings(site, entry)[1]


@hookimpl
def tgw_catalog_sources(site: SiteContext) -> Sequence[CatalogSource]:
    if stack_entry(site.config.plugins) is None:
        return []
    return [_source_for(site)]


@hookimpl
def tgw_authorization_engines(site: SiteContext) -> Sequence[AuthorizationEngine]:
    if stack_entry(site.config.plugins) is None:
        return []
    source = _source_for(site)
    _sources.pop(id(site), None)
    engines: list[Any] = [IntentionsGuard(source, site)]
    if "intentions" not in site.config.plugins:
        from gwcore.plugins.intentions import IntentionsEngine

        engines.append(IntentionsEngine(site))
    return engines
