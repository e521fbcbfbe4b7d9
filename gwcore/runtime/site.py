"""One site at run time: its plugin stack, providers, route table and listener.

The control plane (catalog snapshots, certificate rotations, policy changes) only
ever *replaces* two immutable objects, the :class:`RouteTable` and the
:class:`ServerTLS` snapshot; a connection reads both once, when it is accepted,
so it keeps the table it started with whatever happens later.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from inspect import iscoroutine
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.defer import (
    TimeoutError as DeferredTimeoutError,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gwcore.contract.events import RoutesChanged, SiteStarted, UpstreamConnected, UpstreamFailed
from gwcore.contract.hookspecs import EVENT_HOOKS
from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.contract.plugin_host import PluginStack
from gwcore.contract.providers import (
    AuthorizationEngine,
    AuthzRequest,
    CatalogSource,
    CatalogView,
    CertificateProvider,
    LeafCertificate,
    UpstreamStrategy,
)
from gwcore.net import fasttcp
from gwcore.net.connection_facts import local_address, peer_certificate_der, requested_server_name
from gwcore.net.hostnames import HostnameEndpoints
from gwcore.net.resolver import DNSResolver
from gwcore.net.splice import State, UpstreamFactory
from gwcore.net.terminator import DownstreamFactory, DownstreamProtocol
from gwcore.net.tls import ServerTLS, ServerTLSBuilder
from gwcore.net.upstream import UpstreamConnectError, choose_strategy, connect_first_available
from gwcore.policy.balancing import EndpointPicker, OutlierDetector
from gwcore.policy.config import GatewayConfig, SiteConfig
from gwcore.policy.decision import combine, failure
from gwcore.policy.dns_records import Family, RefreshPolicy, parse_nameserver
from gwcore.policy.model import (
    CatalogSnapshot,
    Decision,
    Destination,
    Endpoint,
    Health,
    ServiceName,
)
from gwcore.policy.routes import RouteTable, merge_mesh_gateways, merge_snapshots
from gwcore.runtime.recheck import LiveRecheck

FIRST_SNAPSHOT_TIMEOUT = 30.0
CONFIG_FAILURES = frozenset({"tls_config", "no_strategy", "no_endpoints"})
"""Failure reasons that say nothing about an endpoint's health (never eject for them)."""
SWEEP_INTERVAL = 5.0

AccessLogWriter = Callable[[dict[str, Any]], None]


class Site:
    """A terminating site (see ``docs/architecture.md``); implements ``SiteContext``."""

    def __init__(
        self,
        config: SiteConfig,
        gateway: GatewayConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        access_log: AccessLogWriter | None = None,
        stack: PluginStack | None = None,
    ) -> None:
        self.name = config.key
        self.config = config
        self.gateway = gateway
        self.reactor = reactor
        self.metrics = metrics
        self.children = SiteChildren(metrics, config.key)
        self.log = Logger(namespace=f"tgw.site.{config.key}")
        self.state_dir: Path = gateway.state_dir
        self.stack = stack or PluginStack(config, gateway)
        self._access_log = access_log
        self._tls_builder = ServerTLSBuilder(
            self._on_servername,
            self._on_verify,
            self._on_alpn,
            trust_domain=config.trust_domain,
            session_lifetime=config.session_lifetime,
        )
        self._routes = RouteTable.empty()
        self._tls, _ = self._tls_builder.build((), lambda s: None, ())
        self._snapshots: dict[int, CatalogSnapshot] = {}
        self._view = CatalogView((), (), "")
        self._subscribers: list[Callable[[CatalogView], None]] = []
        self._rebuilding = False
        self._rebuild_again = False
        self._rebuild_scheduled = False
        self.active: set[DownstreamProtocol] = set()
        self.picker = EndpointPicker(
            OutlierDetector(
                config.outlier_consecutive_failures,
                config.outlier_base_ejection,
                config.outlier_max_ejection,
            )
        )
        self.sources: list[CatalogSource] = []
        self.certs: list[CertificateProvider] = []
        self.engines: list[AuthorizationEngine] = []
        self.strategies: list[UpstreamStrategy] = []
        self.port: Any = None
        self.listening = False
        self._hostnames: HostnameEndpoints | None = None
        self._sweep = LoopingCall(self._sweep_connections)
        self._sweep.clock = reactor
        self._listeners = {hook: bool(self.stack.listeners(hook)) for hook in EVENT_HOOKS}
        self.trusted_domains = config.trusted_domains
        self.inherited_listener: tuple[int, int] | None = None
        """(fd, address family) of a listening socket a worker inherited (gwcore.workers)."""
        self.recheck = LiveRecheck(self)

    # --- SiteContext ----------------------------------------------------------

    def plugin_config(self, plugin: str) -> Mapping[str, Any]:
        return self.config.plugin_section(plugin)

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.config.base_dir / p

    def catalog_view(self) -> CatalogView:
        return self._view

    def subscribe_catalog(self, callback: Callable[[CatalogView], None]) -> None:
        self._subscribers.append(callback)

    # --- Dataplane (used by each connection) ------------------------------------

    def current(self) -> tuple[RouteTable, ServerTLS]:
        return self._routes, self._tls

    def has_listeners(self, hook: str) -> bool:
        return self._listeners[hook]

    def dispatch(self, hook: str, event: Any) -> None:
        self.stack.dispatch(hook, event, self.log, self.metrics)

    def connection_opened(self, conn: DownstreamProtocol) -> bool:
        self.children.accepted.inc()
        if len(self.active) >= self.config.max_connections:
            self.metrics.rejected.labels(site=self.name, reason="overflow").inc()
            return False
        self.active.add(conn)
        self.children.active.inc()
        return True

    def connection_closed(self, conn: DownstreamProtocol) -> None:
        if conn.upstream is not None and conn.endpoint is not None and conn.destination is not None:
            self.picker.closed(conn.destination, conn.endpoint)
        if conn in self.active:
            self.active.discard(conn)
            self.children.active.dec()
        self._flush_bytes(conn)
        if conn.destination is not None and conn.endpoint is not None:
            self.children.service(conn.destination.name).connection_seconds.observe(
                time.time() - conn.started
            )
        listeners = self._listeners["tgw_connection_closed"]
        writer = self._access_log
        if writer is not None and not getattr(writer, "enabled", True):
            writer = None
        if writer is None and not listeners:
            return  # nobody reads the record: do not build it
        record = conn.access_record()
        if writer is not None:
            try:
                writer(record)
            except Exception:
                self.log.failure("writing the access log failed")
        if listeners:
            event = conn.closed_event(record)
            if event is not None:
                self.dispatch("tgw_connection_closed", event)

    def authorize(self, conn: DownstreamProtocol) -> Deferred[Decision]:
        assert conn.identity is not None and conn.destination is not None and conn.info is not None
        gateway_address, gateway_port = local_address(getattr(conn, "transport", None))
        request = AuthzRequest(
            site=self.name,
            gateway_name=self.config.name,
            datacenter=self.config.datacenter,
            source=conn.identity,
            destination=conn.destination,
            sni=conn.sni or "",
            client_address=conn.info.client_address,
            client_port=conn.info.client_port,
            gateway_address=gateway_address,
            gateway_port=gateway_port,
            requested_server_name=requested_server_name(getattr(conn, "tls", None)),
            peer_certificate=peer_certificate_der(getattr(conn, "tls", None))
            if any(getattr(e, "wants_peer_certificate", False) for e in self.engines)
            else b"",
        )
        # A decision in flight when the policy changes is asked again (gwcore.recheck).
        return self.recheck.decide(conn, lambda: self.decide(request))

    def decide(self, request: AuthzRequest) -> Deferred[Decision]:
        """Ask every engine; deny-overrides; any engine failure or timeout is a deny.

        Engines that answer at once (intentions, a cached OPA decision) are combined
        without a Deferred per engine: the usual handshake pays for one ``succeed``.
        """
        answers: list[Decision | Deferred[Decision]] = []
        waiting = False
        for engine in self.engines:
            try:
                answer = engine.authorize(request)
            except Exception:
                failed = self._engine_failed(Failure(), engine)
                answers.append(
                    failed if isinstance(failed, Decision) else failure(engine.name, "cancelled")
                )
                continue
            if iscoroutine(answer):
                answer = Deferred.fromCoroutine(answer)
            if isinstance(answer, Deferred):
                if not answer.called:
                    answer.addTimeout(self.config.authz_timeout, self.reactor)
                answer.addErrback(self._engine_failed, engine)
                waiting = True
            answers.append(answer)
        service = request.destination.name

        def combined(decisions: list[Decision]) -> Decision:
            decision = combine(decisions, self.config.default_policy)
            self.children.decision(service, decision.engine, decision.verdict.value).inc()
            return decision

        if not waiting:
            return succeed(combined(answers))  # type: ignore[arg-type]
        pending = [a if isinstance(a, Deferred) else succeed(a) for a in answers]
        return DeferredList(pending, consumeErrors=True).addCallback(
            lambda results: combined([r for _, r in results])
        )

    def _engine_failed(self, reason: Any, engine: AuthorizationEngine) -> Decision | Any:
        if reason.check(CancelledError):
            return reason  # the client left; nothing to decide, nothing to count
        if reason.check(DeferredTimeoutError):
            detail = f"timed out after {self.config.authz_timeout:g}s"
        else:
            detail = f"{type(reason.value).__name__}: {reason.value}"
        self.metrics.authz_errors.labels(site=self.name, engine=engine.name).inc()
        self.log.warn(
            "authorization engine {engine} failed: {detail}", engine=engine.name, detail=detail
        )
        return failure(engine.name, detail)

    def connect_upstream(self, conn: DownstreamProtocol) -> Deferred[Any]:
        destination = conn.destination
        assert destination is not None and conn.info is not None
        service = destination.name
        try:
            strategy = choose_strategy(self.strategies, destination)
        except UpstreamConnectError as e:
            self.log.warn(
                "refusing {client} -> {service}: {detail}",
                client=conn.info.client_address,
                service=service,
                detail=e.detail,
            )
            return fail(e)
        # A strategy may dial other addresses than the destination's own (the mesh-gateway
        # hop dials mesh gateways): balancing and ejection then apply to those.
        dialled = getattr(strategy, "endpoints_for", None)
        if dialled is not None:
            destination = replace(destination, endpoints=tuple(dialled(destination)))
        endpoints = self.picker.candidates(destination, self.reactor.seconds())
        endpoints = endpoints[: self.config.max_connect_attempts]
        info = conn.info
        timeout = destination.connect_timeout or self.config.connect_timeout

        def on_failure(endpoint: Endpoint, reason: str, detail: str, final: bool) -> None:
            self.metrics.upstream_connect_failures.labels(
                site=self.name, service=service, reason=reason
            ).inc()
            if reason not in CONFIG_FAILURES:
                ejected = self.picker.failed(destination, endpoint, self.reactor.seconds())
                if ejected is not None:
                    self.metrics.upstream_ejections.labels(site=self.name, service=service).inc()
                    self.log.warn(
                        "endpoint {endpoint} of {service} ejected for {seconds:g}s "
                        "after consecutive connect failures",
                        endpoint=str(endpoint),
                        service=service,
                        seconds=ejected,
                    )
                    self._export_endpoints(destination)
            self.log.info(
                "upstream {endpoint} of {service} failed: {reason} ({detail})",
                endpoint=str(endpoint),
                service=service,
                reason=reason,
                detail=detail,
            )
            if self._listeners["tgw_upstream_failed"]:
                self.dispatch(
                    "tgw_upstream_failed",
                    UpstreamFailed(
                        conn=info,
                        destination=destination,
                        endpoint=endpoint,
                        reason=reason,
                        final=final,
                    ),
                )

        def connected(result: tuple[Any, Endpoint, int, float]) -> tuple[Any, Endpoint, int, float]:
            _, endpoint, attempts, seconds = result
            self.picker.succeeded(destination, endpoint)
            self.picker.opened(destination, endpoint)
            if attempts > 1:
                self.metrics.upstream_retries.labels(site=self.name, service=service).inc(
                    attempts - 1
                )
            self.children.service(service).upstream_connect_seconds.observe(seconds)
            if self._listeners["tgw_upstream_connected"]:
                self.dispatch(
                    "tgw_upstream_connected",
                    UpstreamConnected(
                        conn=info,
                        destination=destination,
                        endpoint=endpoint,
                        connect_seconds=seconds,
                        attempts=attempts,
                    ),
                )
            return result

        def unavailable(reason: Any) -> Any:
            if len(endpoints) > 1:
                self.metrics.upstream_retries.labels(site=self.name, service=service).inc(
                    len(endpoints) - 1
                )
            if not reason.check(CancelledError):
                self.metrics.upstream_unavailable.labels(site=self.name, service=service).inc()
                self.log.warn(
                    "no endpoint of {service} reachable: {detail}",
                    service=service,
                    detail=str(reason.value),
                )
            return reason

        d = connect_first_available(
            strategy,
            destination,
            endpoints,
            UpstreamFactory(conn),
            timeout,
            on_failure,
        )
        return d.addCallbacks(connected, unavailable)

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
        return proto.on_verify(errnum, ok) if proto is not None else bool(ok)

    # --- control plane ----------------------------------------------------------

    async def start(self) -> None:
        """Build providers, wait for first snapshots, then listen."""
        self.sources = self.stack.collect("tgw_catalog_sources", site=self)
        # A mesh site never terminates TLS: no provider is built, so no key is ever held.
        if self.config.role != "mesh":
            self.certs = self.stack.collect("tgw_certificate_providers", site=self)
        self.engines = self.stack.collect("tgw_authorization_engines", site=self)
        self.strategies = self.stack.collect("tgw_upstream_strategies", site=self)
        if self.config.role == "terminating" and not self.certs:
            raise RuntimeError(f"site {self.name}: no certificate provider in the plugin stack")
        for provider in self.certs:
            await maybeDeferred(provider.start, self._certs_changed)
        self.recheck.roots_changed()  # the roots later removals are measured against
        for engine in self.engines:
            await maybeDeferred(engine.start, self._policy_changed)
        for index, source in enumerate(self.sources):
            d = maybeDeferred(source.start, functools.partial(self._publish, index))
            d.addTimeout(FIRST_SNAPSHOT_TIMEOUT, self.reactor)
            try:
                await d
            except Exception as e:
                self.log.warn(
                    "catalog source {source} has no first snapshot yet: {e}",
                    source=source.name,
                    e=e,
                )
        await self._rebuild()
        await self.resume_listening()
        self._sweep.start(self._sweep_interval(), now=False)
        host = self.port.getHost()
        address = f"{host.host}:{host.port}"
        self.log.info(
            "site {site} ({gateway}, {dc}) listening on {address} with {n} routes",
            site=self.name,
            gateway=self.config.name,
            dc=self.config.datacenter,
            address=address,
            n=len(self._routes),
        )
        if self._listeners["tgw_site_started"]:
            self.dispatch("tgw_site_started", SiteStarted(site=self.name, address=address))

    async def resume_listening(self) -> None:
        """Listen on the site's endpoint (at start, or again after a failed reload)."""
        # The data-path transports (gwcore.net.fasttcp) for tcp/tcp6 listeners.
        if self.inherited_listener is not None:
            # Adopting duplicates the descriptor: the worker keeps its own.
            self.port = fasttcp.adopt(
                self.reactor, *self.inherited_listener, self.listener_factory()
            )
        else:
            self.port = await fasttcp.listen(
                self.reactor, self.config.listen, self.listener_factory()
            )
        self.listening = True

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let connections drain, close what is left, stop providers.

        ``drain_timeout`` defaults to the site's; a reload retires a replaced site
        with ``math.inf``: its live connections that the new policy still allows
        (``gwcore.recheck``) end on their own terms.
        """
        self.listening = False
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        deadline = self.reactor.seconds() + drain
        poll = 0.05 if drain < 60 else 1.0
        while self.active and self.reactor.seconds() < deadline:
            await _sleep(self.reactor, poll)
        for conn in list(self.active):
            conn.close("shutdown")
        # Closing flushes and then completes asynchronously; wait (bounded) for the
        # access-log records before the caller closes the log.
        deadline = self.reactor.seconds() + 2.0
        while self.active and self.reactor.seconds() < deadline:
            await _sleep(self.reactor, 0.01)
        if self._sweep.running:
            self._sweep.stop()
        if self._hostnames is not None:
            self._hostnames.stop()
        stoppable = [p for p in self.strategies if hasattr(p, "stop")]
        for provider in [*self.sources, *self.engines, *self.certs, *stoppable]:
            try:
                await maybeDeferred(provider.stop)
            except Exception:
                self.log.failure("stopping {name} failed", name=getattr(provider, "name", provider))

    def _publish(self, index: int, snapshot: CatalogSnapshot) -> None:
        previous = self._snapshots.get(index)
        if previous is not None and previous.version == snapshot.version and snapshot.version:
            return
        self._snapshots[index] = snapshot
        self._schedule_rebuild()

    def _schedule_rebuild(self) -> None:
        if self._rebuilding:
            # A rebuild is waiting (e.g. on leaves): it will run again with this data.
            self._rebuild_again = True
        elif self.listening and not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            self.reactor.callLater(0, self._scheduled_rebuild)

    def _scheduled_rebuild(self) -> None:
        self._rebuild_scheduled = False
        d = Deferred.fromCoroutine(self._rebuild())
        d.addErrback(lambda f: self.log.failure("rebuilding routes failed", f))

    async def _rebuild(self) -> None:
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
                for provider in self.certs:
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
                self._install(routes, CatalogView(destinations, intentions, version, gateways))
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
                self._schedule_rebuild,
                lambda result: results.labels(site=self.name, result=result).inc(),
                lambda source: sources.labels(site=self.name, source=source).inc(),
            )
        return self._hostnames

    def listening_address(self) -> tuple[str, int] | None:
        """The (host, port) the site listens on, once it does."""
        if self.port is None:
            return None
        host = self.port.getHost()
        return (host.host, host.port)

    def listener_factory(self) -> Any:
        """The protocol factory of the site's listener (one driver per role)."""
        return DownstreamFactory(self)

    def gateway_leaf(self) -> LeafCertificate | None:
        """The gateway's own leaf (the service named ``config.name``; see SiteContext)."""
        return self._leaf_for(ServiceName(self.config.name))

    def trust_roots(self) -> list[Any]:
        """Every current trust root of the site's certificate providers."""
        return self._roots()

    def _leaf_for(self, service: ServiceName) -> LeafCertificate | None:
        for provider in self.certs:
            leaf = provider.leaf(service)
            if leaf is not None:
                return leaf
        return None

    def _roots(self) -> list[Any]:
        roots: list[Any] = []
        seen: set[bytes] = set()
        for provider in self.certs:
            for root in provider.trust_roots():
                fp = root.fingerprint(hashes.SHA256())
                if fp not in seen:
                    seen.add(fp)
                    roots.append(root)
        return roots

    def _build_tls(self, routes: RouteTable) -> ServerTLS:
        material, missing = self._tls_builder.build(
            [(sni, dest.service) for sni, dest in routes], self._leaf_for, self._roots(), self._tls
        )
        for sni in missing:
            self.log.error(
                "no leaf certificate for route {sni}; it cannot accept connections", sni=sni
            )
        return material

    def _install(self, routes: RouteTable, view: CatalogView) -> None:
        old = self._routes
        self._tls = self._build_tls(routes)
        self._routes = routes
        self.metrics.routes.labels(site=self.name).set(len(routes))
        self.picker.prune(view.destinations)
        gone = {d.name for _, d in old} - {d.name for _, d in routes}
        for service in gone:
            for state in ("healthy", "ejected", "total"):
                with contextlib.suppress(KeyError):
                    self.metrics.upstream_endpoints.remove(self.name, service, state)
        for _, destination in routes:
            self._export_endpoints(destination)
        self.recheck.routes_changed()
        old_snis = {sni for sni, _ in old}
        new_snis = {sni for sni, _ in routes}
        if old_snis != new_snis:
            self.log.info(
                "routes changed: +{added} -{removed} ({n} total)",
                added=sorted(new_snis - old_snis),
                removed=sorted(old_snis - new_snis),
                n=len(routes),
            )
        if view.version != self._view.version or view != self._view:
            self._view = view
            for callback in list(self._subscribers):
                try:
                    callback(view)
                except Exception:
                    self.log.failure("catalog subscriber failed")
        if self._listeners["tgw_routes_changed"]:
            self.dispatch(
                "tgw_routes_changed",
                RoutesChanged(
                    site=self.name, routes=tuple(sorted(new_snis)), version=routes.version
                ),
            )

    def _export_endpoints(self, destination: Destination) -> None:
        now = self.reactor.seconds()
        live = [e for e in destination.endpoints if e.health is not Health.CRITICAL]
        usable = self.picker.usable(destination, now)
        ejected = len(live) - len(usable) if len(usable) < len(live) else 0
        gauge = self.metrics.upstream_endpoints
        gauge.labels(site=self.name, service=destination.name, state="total").set(
            len(destination.endpoints)
        )
        gauge.labels(site=self.name, service=destination.name, state="healthy").set(len(usable))
        gauge.labels(site=self.name, service=destination.name, state="ejected").set(ejected)

    def _certs_changed(self) -> None:
        self._tls = self._build_tls(self._routes)
        self.log.info("certificates changed; new handshakes use the new material")
        self.recheck.roots_changed()

    def _policy_changed(self) -> None:
        """Re-check open connections; close those the new policy denies."""
        self.recheck.policy_changed()

    # --- periodic sweep: byte metrics and idle timeouts ------------------------

    def _sweep_interval(self) -> float:
        idle = self.config.idle_timeout
        return min(SWEEP_INTERVAL, idle / 4) if idle > 0 else SWEEP_INTERVAL

    def _flush_bytes(self, conn: DownstreamProtocol) -> None:
        if conn.destination is None:
            return
        up, down = conn.bytes_up - conn.reported_up, conn.bytes_down - conn.reported_down
        if up or down:
            children = self.children.service(conn.destination.name)
            if up:
                children.bytes_upstream.inc(up)
                conn.reported_up = conn.bytes_up
            if down:
                children.bytes_downstream.inc(down)
                conn.reported_down = conn.bytes_down

    def _sweep_connections(self) -> None:
        now = self.reactor.seconds()
        idle = self.config.idle_timeout
        for conn in list(self.active):
            self._flush_bytes(conn)
            if idle <= 0 or conn.state is not State.SPLICING:
                continue
            moved = conn.bytes_up + conn.bytes_down
            seen, since = conn.idle_mark
            if moved != seen or since == 0.0:
                conn.idle_mark = (moved, now)
            elif now - since >= idle:
                conn.close_idle()

    # --- introspection (admin endpoint) -------------------------------------------

    def readiness(self) -> dict[str, Any]:
        sources = {s.name: _health(s) for s in self.sources}
        certs = {c.name: _health(c) for c in self.certs}
        # Ready once listening with a first snapshot from every source; a source's
        # later errors are reported here but do not fail readiness, because the
        # site keeps serving its last good catalog (pulling every instance out of
        # rotation over one bad file would turn it into an outage).
        ready = self.listening and all(h["last_success"] is not None for h in sources.values())
        return {
            "ready": ready,
            "listening": self.listening,
            "routes": len(self._routes),
            "active_connections": len(self.active),
            "catalog_sources": sources,
            "certificate_providers": certs,
            "engines": [e.name for e in self.engines],
            "plugins": list(self.stack.plugin_names),
        }

    def describe_routes(self) -> dict[str, Any]:
        return {
            "site": self.name,
            "gateway": self.config.name,
            "datacenter": self.config.datacenter,
            "trust_domain": self.config.trust_domain,
            "version": self._routes.version,
            "routes": self._routes.describe(),
        }

    def describe_certificates(self) -> dict[str, Any]:
        tls = self._tls
        return {
            "site": self.name,
            "roots": [_cert_info(r) for r in tls.roots],
            "leaves": {
                sni: _cert_info(leaf.certificate) for sni, leaf in sorted(tls.leaves.items())
            },
        }


def _health(provider: Any) -> dict[str, Any]:
    health = provider.health()
    return {"ok": health.ok, "last_success": health.last_success, "last_error": health.last_error}


def _cert_info(cert: Any) -> dict[str, Any]:
    from cryptography import x509

    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "uris": uris,
    }


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
