"""The ``consul_certs`` plugin: trust roots and leaf certificates from Consul's Connect CA.

Section ``[sites.NAME.consul_certs]``: the connection keys of
:func:`gwcore.net.consul.read_consul_settings` (see ``docs/consul.md``), and
``renew_fraction`` (0.6): a leaf is read again once this fraction of its lifetime has
passed (the agent renews it between 60 % and 90 %; until it does, the same leaf comes
back and the next attempt is scheduled a quarter of the remaining time later).

- **Roots**: one blocking watch on ``/v1/agent/connect/ca/roots``. *Every* listed root
  is trusted, not only the active one, so clients with leaves from an old root keep
  working through a CA rotation for as long as Consul lists it (reference §2).
- **Leaves**: ``/v1/agent/connect/ca/leaf/<svc>`` once per linked service (the services
  of each route table, from :meth:`prepare`), and for the gateway's own name. Leaves
  are read without blocking, so 1,000 services cost no long polls; they are read again
  when the active root changes and before they expire.
- Every change is pushed to the site, which builds new TLS contexts for *new*
  handshakes; established connections keep the material they were accepted with.
- When Consul fails, roots and leaves in hand stay in use (staleness metric, ``/ready``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from gwcore.contract import pki
from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import LeafCertificate, SourceHealth, TrustRoot
from gwcore.net.consul import (
    BlockingWatch,
    ConsulClient,
    ConsulError,
    ConsulFreshness,
    ConsulResponse,
    ConsulSettings,
    acquire_client,
    connection_problems,
    read_consul_settings,
    release_client,
)
from gwcore.net.consul_watch import scope_query
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.model import ServiceName, SpiffeID

if TYPE_CHECKING:
    from gwcore.contract.providers import CertificateProvider, SiteContext

NAME = "consul_certs"
MODULE = "gwcore.plugins.consul_certs"
DEFAULT_RENEW_FRACTION = 0.6
_MIN_RENEW_DELAY = 1.0


def stack_entry(plugins: Sequence[str]) -> str | None:
    """The name this plugin has in a stack: its built-in name or its module path."""
    return next((entry for entry in (NAME, MODULE) if entry in plugins), None)


@dataclass(frozen=True, slots=True)
class Settings:
    consul: ConsulSettings
    renew_fraction: float = DEFAULT_RENEW_FRACTION


def read_settings(site: SiteConfig, entry: str) -> tuple[Settings, list[ConfigProblem]]:
    reader = site.reader(entry)
    consul = read_consul_settings(reader, site.base_dir)
    fraction = reader.number("renew_fraction", DEFAULT_RENEW_FRACTION, minimum=0.1, maximum=0.9)
    connection_problems(reader, consul)
    return Settings(consul, fraction), reader.finish()


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    entry = stack_entry(site.plugins)
    return [] if entry is None else read_settings(site, entry)[1]


@hookimpl
def tgw_certificate_providers(site: SiteContext) -> Sequence[CertificateProvider]:
    entry = stack_entry(site.config.plugins)
    return [] if entry is None else [ConsulCertificates(site, entry)]


@dataclass(frozen=True, slots=True)
class _Held:
    leaf: LeafCertificate
    serial: str
    root_id: str  # the active root when it was read


def parse_roots(body: Any) -> tuple[str, str, list[x509.Certificate]]:
    """``(ActiveRootID, TrustDomain, every root)`` from a ca/roots answer; ValueError if bad."""
    if not isinstance(body, dict) or not isinstance(body.get("Roots"), list):
        raise ValueError("ca/roots: expected an object with a Roots list")
    roots = []
    for i, item in enumerate(body["Roots"]):
        pem = item.get("RootCert") if isinstance(item, dict) else None
        if not isinstance(pem, str):
            raise ValueError(f"ca/roots: Roots[{i}].RootCert is missing")
        roots.extend(pki.load_certificates(pem.encode()))
    if not roots:
        raise ValueError("ca/roots: no root is listed")
    return str(body.get("ActiveRootID", "")), str(body.get("TrustDomain", "")), roots


def parse_leaf(body: Any, expected_uri: str) -> tuple[LeafCertificate, str]:
    """The leaf and its serial from a ca/leaf answer; ValueError if bad or for another ID."""
    if not isinstance(body, dict):
        raise ValueError("ca/leaf: expected an object")
    cert_pem, key_pem = body.get("CertPEM"), body.get("PrivateKeyPEM")
    if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
        raise ValueError("ca/leaf: CertPEM and PrivateKeyPEM are required")
    leaf = pki.load_leaf(cert_pem.encode(), key_pem.encode())
    uris = pki.uri_sans(leaf.certificate)
    if uris != [expected_uri]:
        raise ValueError(f"ca/leaf: the certificate names {uris}, not {expected_uri}")
    return leaf, str(body.get("SerialNumber", ""))


class ConsulCertificates:
    """A :class:`~gwcore.contract.providers.CertificateProvider` backed by Consul's Connect CA."""

    name = NAME

    def __init__(self, site: SiteContext, entry: str | None = None) -> None:
        self._site = site
        entry = entry or stack_entry(site.config.plugins) or NAME
        self.settings, _ = read_settings(site.config, entry)
        self._config = site.config
        self.client: ConsulClient | None = None
        self.freshness = ConsulFreshness(site, NAME)
        self._rng = random.Random()
        self._roots: list[x509.Certificate] = []
        self._roots_domain = ""
        self._active_root = ""
        self._held: dict[ServiceName, _Held] = {}
        self._wanted: set[ServiceName] = {ServiceName(site.config.name)}
        self._timers: dict[ServiceName, Any] = {}
        self._changed: Callable[[], None] | None = None
        self._first: Deferred[None] | None = None
        self._watch: BlockingWatch | None = None
        self._running = False
        self._trust_domain_mismatch = False

    # --- CertificateProvider -------------------------------------------------------

    def start(self, changed: Callable[[], None]) -> Deferred[None]:
        self._changed = changed
        self._running = True
        self.client = acquire_client(self._site.reactor, self.settings.consul)
        self._first = Deferred()
        self._watch = BlockingWatch(
            self.client,
            "ca-roots",
            "/v1/agent/connect/ca/roots",
            self._on_roots,
            self._failed,
            on_ok=self._roots_answered,
        )
        self._watch.start()
        # A site must not wait forever for Consul: the first answer or failure is enough.
        return self._first.addErrback(
            lambda f: self._site.log.warn(
                "consul_certs has no roots yet: {e}", e=f.getErrorMessage()
            )
        )

    def stop(self) -> Deferred[None]:
        self._running = False
        self._changed = None
        if self._watch is not None:
            self._watch.stop()
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        client, self.client = self.client, None
        if client is None:
            return Deferred.fromCoroutine(_nothing())
        return maybeDeferred(release_client, client)

    def prepare(self, services: Collection[ServiceName]) -> Deferred[None]:
        """Read leaves for services that have none; forget services no longer routed."""
        self._wanted = {*services, ServiceName(self._config.name)}
        for gone in set(self._held) - self._wanted:
            del self._held[gone]
            call = self._timers.pop(gone, None)
            if call is not None and call.active():
                call.cancel()
        missing = [s for s in self._wanted if s not in self._held]
        return Deferred.fromCoroutine(self._fetch(missing, notify=False))

    def leaf(self, service: ServiceName) -> LeafCertificate | None:
        held = self._held.get(service)
        return held.leaf if held is not None else None

    def trust_roots(self) -> Sequence[TrustRoot]:
        """Consul's roots, for the trust domain Consul's ``TrustDomain`` names (the
        site's own when Consul omits it; a mismatch is reported in ``health``)."""
        domain = self._roots_domain or self._config.trust_domain
        return [TrustRoot(root, domain) for root in self._roots]

    def health(self) -> SourceHealth:
        return SourceHealth(self.freshness.last_success, self.freshness.error)

    # --- roots -----------------------------------------------------------------

    def _failed(self, error: ConsulError) -> None:
        self._site.metrics.certificate_errors.labels(site=self._site.name, provider=NAME).inc()
        self.freshness.failed(error)
        if self._first is not None and not self._first.called:
            self._first.errback(error)

    def _roots_answered(self, endpoint: str) -> None:
        if not self._trust_domain_mismatch:
            self.freshness.ok(endpoint)

    async def _on_roots(self, response: ConsulResponse) -> None:
        try:
            active, trust_domain, roots = parse_roots(response.json())
        except ValueError as e:
            raise ConsulError("ca-roots", "invalid", str(e)) from None
        self._trust_domain_mismatch = bool(
            trust_domain and trust_domain.lower() != self._config.trust_domain
        )
        if self._trust_domain_mismatch:
            self.freshness.failed(
                ConsulError(
                    "ca-roots",
                    "invalid",
                    f"Consul's trust domain is {trust_domain!r} but the site's trust_domain "
                    f"is {self._config.trust_domain!r}; SNI names and identities will not match",
                )
            )
        else:
            self.freshness.ok("ca-roots")
        rotated = bool(self._active_root) and active != self._active_root
        roots_changed = [r.fingerprint(_sha256()) for r in roots] != [
            r.fingerprint(_sha256()) for r in self._roots
        ]
        self._roots = roots
        self._roots_domain = (trust_domain or "").lower()
        self._active_root = active
        for root in roots:
            self._site.metrics.certificate_expiry.labels(
                site=self._site.name, kind="root", name=pki.fingerprint_hex(root)[:23]
            ).set(root.not_valid_after_utc.timestamp())
        if rotated:
            self._site.log.info("Consul's active root changed; reading new leaves")
            await self._fetch(sorted(self._wanted, key=str), notify=False)
        if (roots_changed or rotated) and self._changed is not None:
            self._changed()
        if self._first is not None and not self._first.called:
            self._first.callback(None)

    # --- leaves ------------------------------------------------------------------

    def _uri(self, service: ServiceName) -> str:
        return SpiffeID(
            self._config.trust_domain,
            service.namespace,
            self._config.datacenter,
            service.name,
            service.partition,
        ).uri

    async def _fetch(self, services: Sequence[ServiceName], notify: bool) -> None:
        if not services or self.client is None:
            return
        client = self.client
        pending = [
            client.get(
                "ca-leaf",
                f"/v1/agent/connect/ca/leaf/{s.name}",
                scope_query(s.namespace, s.partition),
            ).addCallback(lambda r, s=s: (s, r))
            for s in services
        ]
        changed = False
        failed = False
        for ok, value in await DeferredList(pending, consumeErrors=True):
            if not ok:
                failed = True
                if isinstance(value.value, ConsulError):
                    self._failed(value.value)
                continue
            service, response = value
            if service not in self._wanted:
                continue
            try:
                leaf, serial = parse_leaf(response.json(), self._uri(service))
            except ValueError as e:
                failed = True
                self._failed(ConsulError("ca-leaf", "invalid", f"{service}: {e}"))
                continue
            held = self._held.get(service)
            if held is None or held.serial != serial or held.leaf.fingerprint != leaf.fingerprint:
                self._held[service] = _Held(leaf, serial, self._active_root)
                changed = True
                self._site.metrics.certificate_expiry.labels(
                    site=self._site.name, kind="leaf", name=str(service)
                ).set(leaf.not_after)
            self._schedule(service)
        if not failed:
            self.freshness.ok("ca-leaf")
        if changed and notify and self._changed is not None:
            self._changed()
        if failed:
            for service in services:
                self._schedule(service, retry=True)

    def _schedule(self, service: ServiceName, retry: bool = False) -> None:
        if not self._running:
            return
        old = self._timers.pop(service, None)
        if old is not None and old.active():
            old.cancel()
        now = time.time()  # certificate validity is wall-clock time, not the reactor's
        held = self._held.get(service)
        if held is None or retry:
            delay = self.settings.consul.retry_max if held is not None else 5.0
            delay = min(delay, 30.0)
        else:
            leaf = held.leaf
            start = leaf.certificate.not_valid_before_utc.timestamp()
            renew_at = start + self.settings.renew_fraction * (leaf.not_after - start)
            delay = renew_at - now
            if delay <= 0:
                delay = (leaf.not_after - now) / 4
        delay = max(_MIN_RENEW_DELAY, delay)

        def renew() -> None:
            self._timers.pop(service, None)
            d = Deferred.fromCoroutine(self._fetch([service], notify=True))
            d.addErrback(lambda f: self._site.log.failure("renewing a leaf failed", f))

        self._timers[service] = self._site.reactor.callLater(delay, renew)


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


async def _nothing() -> None:
    return None
