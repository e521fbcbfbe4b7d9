"""Step 2 of a connection's life, *route*: SNI → destination, and the TLS material per SNI.

The router owns the catalog snapshots the site's sources publish, the immutable
:class:`RouteTable` built from them, the :class:`ServerTLS` snapshot (a leaf per routed
SNI, the trust roots) and the :class:`CatalogView` plugins subscribe to. The control
plane only ever *replaces* the table and the TLS snapshot; a connection reads both once,
when it is accepted (:meth:`Router.current`), so it keeps the table it started with
whatever happens later.

What a new table means to the other steps (balancing state to prune, live connections to
re-check) is the site's business: the router calls ``installed``; then it tells the
catalog subscribers and sends ``tgw_routes_changed``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from gwcore.contract.events import EventSink, RoutesChanged
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.providers import (
    CatalogView,
    CertificateProvider,
    LeafCertificate,
    TrustRoot,
)
from gwcore.net.client_trust import TrustBundles, malformed, misconfigured
from gwcore.net.hostnames import HostnameEndpoints
from gwcore.net.resolver import DNSResolver
from gwcore.net.tls import ServerTLS, ServerTLSBuilder
from gwcore.policy.config import SiteConfig
from gwcore.policy.dns_records import Family, RefreshPolicy, parse_nameserver
from gwcore.policy.model import CatalogSnapshot, ServiceName
from gwcore.policy.routes import (
    RouteTable,
    merge_mesh_gateways,
    merge_mesh_http,
    merge_snapshots,
)

Installed = Callable[[RouteTable, RouteTable, CatalogView], None]
"""``installed(old, new, view)``: called once the new table and TLS material are in place."""


class Router:
    """Routes of one site; see the module docstring."""

    def __init__(
        self,
        config: SiteConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        log: Logger,
        certificates: Callable[[], Sequence[CertificateProvider]],
        accepting: Callable[[], bool],
        installed: Installed,
        events: EventSink,
        terminates_tls: bool = True,
    ) -> None:
        self.config = config
        self.name = config.key
        self.reactor = reactor
        self.metrics = metrics
        self.log = log
        self._certificates = certificates
        self._accepting = accepting
        self._installed = installed
        self._events = events
        self._warned_untagged: set[str] = set()
        self._refused_items: set[tuple[str, str]] = set()
        # A mesh site terminates nothing: it keeps the certificate-less base context.
        self.terminates_tls = terminates_tls
        self._tls_builder = ServerTLSBuilder(
            self._on_servername,
            self._on_verify,
            self._on_alpn,
            trust_domain=config.trust_domain,
            session_lifetime=config.session_lifetime,
        )
        self.routes = RouteTable.empty()
        self.tls, _ = self._tls_builder.build((), lambda s: None, ())
        self.view = CatalogView((), (), "")
        self._snapshots: dict[int, CatalogSnapshot] = {}
        self._subscribers: list[Callable[[CatalogView], None]] = []
        self._rebuilding = False
        self._rebuild_again = False
        self._rebuild_scheduled = False
        self._hostnames: HostnameEndpoints | None = None

    # --- read by each connection and by plugins -----------------------------------

    def current(self) -> tuple[RouteTable, ServerTLS]:
        return self.routes, self.tls

    def subscribe(self, callback: Callable[[CatalogView], None]) -> None:
        self._subscribers.append(callback)

    def leaf_for(self, service: ServiceName) -> LeafCertificate | None:
        for provider in self._certificates():
            leaf = provider.leaf(service)
            if leaf is not None:
                return leaf
        return None

    def tagged_roots(self) -> list[TrustRoot]:
        """Every current root of the certificate providers with the trust domain it is
        configured for, each (domain, root) once. A provider still answering bare
        certificates (the 0.1 contract) has them counted as the local domain's."""
        roots: list[TrustRoot] = []
        seen: set[tuple[str, bytes]] = set()
        for provider in self._certificates():
            for item in provider.trust_roots():
                problem = malformed(item)
                if problem is not None:  # left out: trusted for nothing
                    self._refused_item(provider.name, problem)
                    continue
                if not isinstance(item, TrustRoot):
                    self._untagged(provider.name)
                    item = TrustRoot(item, self.config.trust_domain)
                key = (item.trust_domain.lower(), item.certificate.fingerprint(hashes.SHA256()))
                if key not in seen:
                    seen.add(key)
                    roots.append(item)
        return roots

    def trust_roots(self) -> list[Any]:
        """Every current trust root of the certificate providers, each once, except
        those refused because they name another trust domain than their own."""
        roots: list[Any] = []
        for root in self.tagged_roots():
            if misconfigured(root) is None and root.certificate not in roots:
                roots.append(root.certificate)
        return roots

    def trust_bundles(self) -> Mapping[str, Sequence[Any]]:
        """The current roots by configured trust domain (misconfigured ones left out)."""
        return TrustBundles.build(self.tagged_roots()).roots

    def _refused_item(self, provider: str, problem: str) -> None:
        if (provider, problem) in self._refused_items:
            return  # once per provider and problem, however often the roots are read
        self._refused_items.add((provider, problem))
        self.log.error(
            "certificate provider {provider!r} returned a trust root that cannot be used "
            "({problem}): it is left out and vouches for no client; fix the provider to "
            "return TrustRoot(certificate, trust_domain) (gwcore.contract.providers)",
            provider=provider,
            problem=problem,
        )

    def _untagged(self, provider: str) -> None:
        if provider in self._warned_untagged:
            return
        self._warned_untagged.add(provider)
        message = (
            f"certificate provider {provider!r} returns trust roots without a trust domain; "
            "they count as the site's own trust domain's. Return TrustRoot(certificate, "
            "trust_domain) (gwcore.contract.providers): bare certificates stop working in "
            "the next release"
        )
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        self.log.warn("{message}", message=message)

    # --- TLS callbacks (called by OpenSSL during handshakes) --------------------

    def _on_servername(self, conn: Any) -> None:
        proto = conn.get_app_data()
        try:
            proto.on_servername(conn)
        except Exception:
            # Never let an exception reach OpenSSL: the connection keeps the
            # certificate-less context and the handshake fails cleanly.
            self.log.failure("servername callback failed")

    def _on_alpn(self, conn: Any, offered: list[bytes]) -> Any:
        proto = conn.get_app_data()
        try:
            return proto.on_alpn(offered)
        except Exception:
            self.log.failure("ALPN callback failed")
            return SSL.NO_OVERLAPPING_PROTOCOLS

    def _on_verify(self, conn: Any, cert: Any, errnum: int, depth: int, ok: int) -> bool:
        proto = conn.get_app_data()
        leaf = cert if depth == 0 else None
        return proto.on_verify(errnum, ok, leaf) if proto is not None else bool(ok)

    # --- control plane ----------------------------------------------------------

    def publish(self, index: int, snapshot: CatalogSnapshot) -> None:
        """Catalog source number ``index`` published ``snapshot``."""
        previous = self._snapshots.get(index)
        if previous is not None and previous.version == snapshot.version and snapshot.version:
            return
        self._snapshots[index] = snapshot
        self.schedule_rebuild()

    def schedule_rebuild(self) -> None:
        if self._rebuilding:
            # A rebuild is waiting (e.g. on leaves): it will run again with this data.
            self._rebuild_again = True
        elif self._accepting() and not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            self.reactor.callLater(0, self._scheduled_rebuild)

    def _scheduled_rebuild(self) -> None:
        self._rebuild_scheduled = False
        d = Deferred.fromCoroutine(self.rebuild())
        d.addErrback(lambda f: self.log.failure("rebuilding routes failed", f))

    async def rebuild(self) -> None:
        if self._rebuilding:
            self._rebuild_again = True
            return
        self._rebuilding = True
        try:
            while True:
                self._rebuild_again = False
                snapshots = [self._snapshots[i] for i in sorted(self._snapshots)]
                destinations, intentions, version = merge_snapshots(snapshots)
                # The route table carries effective settings and resolved hostnames;
                # the view stays as published.
                routed = tuple(
                    d if d.lb_policy else replace(d, lb_policy=self.config.lb_policy)
                    for d in destinations
                )
                if self._hostnames is not None or HostnameEndpoints.hostnames(routed):
                    routed = await self._hostname_endpoints().expand(routed)
                routes = RouteTable.build(
                    routed, self.config.datacenter, self.config.trust_domain, version
                )
                services = routes.services()
                if any(d.datacenter != self.config.datacenter for d in destinations):
                    services |= {ServiceName(self.config.name)}  # the hop's own leaf
                for provider in self._certificates():
                    try:
                        await maybeDeferred(provider.prepare, services)
                    except Exception as e:
                        self.metrics.certificate_errors.labels(
                            site=self.name, provider=provider.name
                        ).inc()
                        self.log.error(
                            "{provider} could not prepare leaves: {e}", provider=provider.name, e=e
                        )
                gateways = merge_mesh_gateways(snapshots)
                mesh_http = merge_mesh_http(snapshots)
                view = CatalogView(destinations, intentions, version, gateways, mesh_http)
                self._install(routes, view)
                if not self._rebuild_again:
                    return
        finally:
            self._rebuilding = False

    def _hostname_endpoints(self) -> HostnameEndpoints:
        if self._hostnames is None:
            c = self.config
            results, sources = self.metrics.hostname_resolutions, self.metrics.hostname_answers
            self._hostnames = HostnameEndpoints(
                self.reactor,
                DNSResolver(
                    self.reactor,
                    [parse_nameserver(n) for n in c.dns_nameservers] or None,
                    timeout=c.dns_timeout,
                    edns_payload=c.dns_edns_payload,
                    search=c.dns_search,
                    ndots=c.dns_ndots,
                    hosts_file=c.hosts_file or None,
                ),
                RefreshPolicy(c.dns_min_ttl, c.dns_max_ttl, c.dns_max_stale, c.dns_hold_nx),
                Family(c.dns_family),
                self.schedule_rebuild,
                lambda result: results.labels(site=self.name, result=result).inc(),
                lambda source: sources.labels(site=self.name, source=source).inc(),
            )
        return self._hostnames

    def build_tls(self, routes: RouteTable) -> ServerTLS:
        if not self.terminates_tls:
            return self.tls  # the certificate-less base: a mesh site terminates nothing
        material, missing = self._tls_builder.build(
            [(sni, dest.service) for sni, dest in routes],
            self.leaf_for,
            self.tagged_roots(),
            self.tls,
        )
        if material.trust is not self.tls.trust:
            self._report_bundles(material.trust)
        for sni in missing:
            self.log.error(
                "no leaf certificate for route {sni}; it cannot accept connections", sni=sni
            )
        return material

    def _report_bundles(self, trust: TrustBundles) -> None:
        """Log, when the bundles change, each root left out and each trusted domain
        without a bundle (its clients are all refused as ``wrong_trust_bundle``)."""
        for root, problem in trust.refused:
            self.log.error(
                "trust root {subject} refused: {problem}",
                subject=root.certificate.subject.rfc4514_string(),
                problem=problem,
            )
        for domain in self.config.extra_trust_domains:
            if domain not in trust.roots:
                self.log.warn(
                    "extra trust domain {domain} has no trust bundle: no certificate "
                    "provider gives roots for it, so none of its clients can connect",
                    domain=domain,
                )

    def _install(self, routes: RouteTable, view: CatalogView) -> None:
        old = self.routes
        self.tls = self.build_tls(routes)
        self.routes = routes
        self.metrics.routes.labels(site=self.name).set(len(routes))
        self._installed(old, routes, view)
        old_snis = {sni for sni, _ in old}
        new_snis = {sni for sni, _ in routes}
        if old_snis != new_snis:
            self.log.info(
                "routes changed: +{added} -{removed} ({n} total)",
                added=sorted(new_snis - old_snis),
                removed=sorted(old_snis - new_snis),
                n=len(routes),
            )
        if view.version != self.view.version or view != self.view:
            self.view = view
            for callback in list(self._subscribers):
                try:
                    callback(view)
                except Exception:
                    self.log.failure("catalog subscriber failed")
        if self._events.has_listeners("tgw_routes_changed"):
            self._events.dispatch(
                "tgw_routes_changed",
                RoutesChanged(
                    site=self.name, routes=tuple(sorted(new_snis)), version=routes.version
                ),
            )

    def certificates_changed(self) -> None:
        """A provider rotated material: new handshakes use it, live connections keep theirs."""
        self.tls = self.build_tls(self.routes)
        self.log.info("certificates changed; new handshakes use the new material")

    def stop(self) -> None:
        if self._hostnames is not None:
            self._hostnames.stop()
