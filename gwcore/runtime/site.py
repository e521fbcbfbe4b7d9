"""One site at run time: assembly and lifecycle of the steps of a connection's life.

A connection goes through five steps, each one small object that owns its state
(``docs/architecture.md`` draws them):

1. accept (:mod:`gwcore.runtime.accept`): the listener, admission, draining;
2. route (:mod:`gwcore.runtime.route`): SNI → destination, and the TLS material per SNI;
3. authorize (:mod:`gwcore.runtime.authorize`, re-checks in :mod:`gwcore.runtime.recheck`);
4. pick an endpoint and connect (:mod:`gwcore.runtime.dial`);
5. forward and close (:mod:`gwcore.runtime.forward`).

The site builds the steps, wires them together, and runs the lifecycle: start (providers
from the plugin stack, first snapshots, listen), reload hand-over (``recheck``), stop. It
is the ``SiteContext`` plugins see, and the one object the net layer's protocols call.

The control plane (catalog snapshots, certificate rotations, policy changes) only
ever *replaces* two immutable objects, the :class:`RouteTable` and the
:class:`ServerTLS` snapshot; a connection reads both once, when it is accepted,
so it keeps the table it started with whatever happens later.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from gwcore.contract.events import SiteStarted
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
from gwcore.net.proxied import ProxiedDownstreamFactory
from gwcore.net.terminator import DownstreamFactory, DownstreamProtocol
from gwcore.net.tls import ServerTLS
from gwcore.policy.admission import Admission
from gwcore.policy.balancing import EndpointPicker
from gwcore.policy.config import GatewayConfig, SiteConfig
from gwcore.policy.consul_mesh_entry import describe_mesh_http
from gwcore.policy.model import Decision, ServiceName, Verdict
from gwcore.policy.routes import RouteTable
from gwcore.runtime.accept import Acceptor
from gwcore.runtime.authorize import Authorizer
from gwcore.runtime.dial import CONFIG_FAILURES, Dialer
from gwcore.runtime.forward import SWEEP_INTERVAL, AccessLogWriter, Forwarder
from gwcore.runtime.l7_site import PER_REQUEST, L7Step
from gwcore.runtime.recheck import LiveRecheck
from gwcore.runtime.route import Router
from gwcore.runtime.upstream_files import destination_file_problems

FIRST_SNAPSHOT_TIMEOUT = 30.0

__all__ = [
    "CONFIG_FAILURES",
    "FIRST_SNAPSHOT_TIMEOUT",
    "SWEEP_INTERVAL",
    "AccessLogWriter",
    "Site",
]


class Site:
    """A terminating site (see ``docs/architecture.md``); implements ``SiteContext``."""

    terminates_tls = True
    """False for a mesh site: its router keeps the certificate-less base context."""

    def __init__(
        self,
        config: SiteConfig,
        gateway: GatewayConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        access_log: AccessLogWriter | None = None,
        stack: PluginStack | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.name = config.key
        self.config = config
        self.gateway = gateway
        self.reactor = reactor
        self.metrics = metrics
        self.children = SiteChildren(metrics, config.key)
        metrics.max_connections.labels(site=config.key).set(config.max_connections)
        self.log = Logger(namespace=f"tgw.site.{config.key}")
        self.state_dir: Path = gateway.state_dir
        self.stack = stack or PluginStack(config, gateway)
        self._listeners = {hook: bool(self.stack.listeners(hook)) for hook in EVENT_HOOKS}
        self.sources: list[CatalogSource] = []
        self.certs: list[CertificateProvider] = []
        self.trusted_domains = config.trusted_domains
        # The steps of a connection's life, in order.
        self.acceptor = Acceptor(
            config,
            reactor,
            metrics,
            self.children,
            lambda: self.listener_factory(),
            # One per process (GatewayService passes it to every site); policy.admission.
            admission or Admission(gateway.max_connections, gateway.max_handshakes),
        )
        self.router = Router(
            config,
            reactor,
            metrics,
            self.log,
            certificates=lambda: self.certs,
            accepting=lambda: self.acceptor.listening,
            installed=self._routes_installed,
            events=self,
            terminates_tls=self.terminates_tls,
        )
        self.authorizer = Authorizer(config, reactor, metrics, self.children, self.log)
        self.dialer = Dialer(config, reactor, metrics, self.children, self.log, self)
        self.forwarder = Forwarder(
            config,
            reactor,
            self.children,
            self.log,
            self,
            access_log,
            lambda: self.active,
            self.listening_address,
        )
        self.recheck = LiveRecheck(self)
        self.l7 = L7Step(self)  # HTTP-like destinations: per request (docs/l7.md)
        self.dialer.ejected = self.l7.ejected  # its pools stop using ejected endpoints

    # --- the steps' state, under the names plugins, the service and tests use -------

    @property
    def reactor(self) -> Any:
        """The injected reactor and clock; replacing it replaces every step's."""
        return self._reactor

    @reactor.setter
    def reactor(self, value: Any) -> None:
        self._reactor = value
        for name in ("acceptor", "router", "authorizer", "dialer", "forwarder"):
            step = self.__dict__.get(name)
            if step is not None:
                step.reactor = value

    @property
    def active(self) -> set[DownstreamProtocol]:
        return self.acceptor.active

    @property
    def admission(self) -> Admission:
        return self.acceptor.admission

    @property
    def port(self) -> Any:
        return self.acceptor.port

    @property
    def listening(self) -> bool:
        return self.acceptor.listening

    @listening.setter
    def listening(self, value: bool) -> None:
        self.acceptor.listening = value

    @property
    def inherited_listener(self) -> tuple[int, int] | None:
        """(fd, address family) of a listening socket a worker inherited (runtime.workers)."""
        return self.acceptor.inherited_listener

    @inherited_listener.setter
    def inherited_listener(self, value: tuple[int, int] | None) -> None:
        self.acceptor.inherited_listener = value

    @property
    def engines(self) -> list[AuthorizationEngine]:
        return self.authorizer.engines

    @engines.setter
    def engines(self, value: list[AuthorizationEngine]) -> None:
        self.authorizer.engines = value

    @property
    def strategies(self) -> list[UpstreamStrategy]:
        return self.dialer.strategies

    @strategies.setter
    def strategies(self, value: list[UpstreamStrategy]) -> None:
        self.dialer.strategies = value

    @property
    def picker(self) -> EndpointPicker:
        return self.dialer.picker

    # --- SiteContext ----------------------------------------------------------

    def plugin_config(self, plugin: str) -> Mapping[str, Any]:
        return self.config.plugin_section(plugin)

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.config.base_dir / p

    def catalog_view(self) -> CatalogView:
        return self.router.view

    def subscribe_catalog(self, callback: Callable[[CatalogView], None]) -> None:
        self.router.subscribe(callback)

    def gateway_leaf(self) -> LeafCertificate | None:
        """The gateway's own leaf (the service named ``config.name``; see SiteContext)."""
        return self.router.leaf_for(ServiceName(self.config.name))

    def trust_roots(self) -> list[Any]:
        """Every current trust root of the site's certificate providers."""
        return self.router.trust_roots()

    def trust_bundles(self) -> Mapping[str, Sequence[Any]]:
        """The current roots by the trust domain each is configured for."""
        return self.router.trust_bundles()

    # --- Dataplane: what each connection's protocol calls, step by step -------------

    def has_listeners(self, hook: str) -> bool:
        return self._listeners[hook]

    def dispatch(self, hook: str, event: Any) -> None:
        self.stack.dispatch(hook, event, self.log, self.metrics)

    def connection_opened(self, conn: DownstreamProtocol) -> bool:
        return self.acceptor.admit(conn)

    def records_wanted(self, conn: DownstreamProtocol) -> bool:
        return self.forwarder.records_wanted()

    def handshake_finished(self, conn: Any) -> None:
        """``conn``'s TLS handshake (a mesh site: its ClientHello) is over: free its slot."""
        self.acceptor.handshake_finished(conn)

    def current(self) -> tuple[RouteTable, ServerTLS]:
        return self.router.current()

    def authorize(self, conn: DownstreamProtocol) -> Deferred[Decision]:
        if self.recheck.accepted(conn):  # routes or roots changed during its handshake
            return succeed(Decision(Verdict.DENY, "recheck", conn.close_cause or "closed"))
        if self.l7.serves(conn):
            return succeed(PER_REQUEST)  # each request is decided (runtime.l7_exchange)
        request = self.authorizer.request(conn)
        # A decision in flight when the policy changes is asked again (runtime.recheck).
        return self.recheck.decide(conn, lambda: self.decide(request))

    def decide(self, request: AuthzRequest) -> Deferred[Decision]:
        """Ask every engine; deny-overrides (see :mod:`gwcore.runtime.authorize`)."""
        return self.authorizer.decide(request)

    def connect_upstream(self, conn: DownstreamProtocol) -> Deferred[Any]:
        if self.l7.serves(conn):
            return self.l7.session(conn)  # an HTTP session in place of the upstream
        return self.dialer.connect(
            conn, lambda strategy: self.forwarder.upstream_factory(conn, strategy)
        )

    def connection_closed(self, conn: DownstreamProtocol) -> None:
        self.dialer.closed(conn)
        self.acceptor.release(conn)
        self.forwarder.closed(conn)
        self.l7.closed(conn)

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Build providers, wait for first snapshots, then listen."""
        # addons' load(ctx)/configure (gwcore.contract.addon_lifecycle)
        self.stack.load_addons(self)
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
            d = maybeDeferred(source.start, functools.partial(self.router.publish, index))
            d.addTimeout(FIRST_SNAPSHOT_TIMEOUT, self.reactor)
            try:
                await d
            except Exception as e:
                self.log.warn(
                    "catalog source {source} has no first snapshot yet: {e}",
                    source=source.name,
                    e=e,
                )
        await self.router.rebuild()
        await self.resume_listening()
        self.forwarder.start()
        host = self.port.getHost()
        address = f"{host.host}:{host.port}"
        self.log.info(
            "site {site} ({gateway}, {dc}) listening on {address} with {n} routes",
            site=self.name,
            gateway=self.config.name,
            dc=self.config.datacenter,
            address=address,
            n=len(self.router.routes),
        )
        if self._listeners["tgw_site_started"]:
            self.dispatch("tgw_site_started", SiteStarted(site=self.name, address=address))

    async def resume_listening(self) -> None:
        """Listen on the site's endpoint (at start, or again after a failed reload)."""
        await self.acceptor.listen()

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let connections drain, close what is left, stop providers.

        ``drain_timeout`` defaults to the site's; a reload retires a replaced site
        with ``math.inf``: its live connections that the new policy still allows
        (``gwcore.runtime.recheck``) end on their own terms.
        """
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.l7.drain(self.active)  # keep-alive HTTP connections end after their request
        await self.acceptor.drain(drain)
        self.forwarder.stop()
        self.l7.stop()
        self.router.stop()
        stoppable = [p for p in self.strategies if hasattr(p, "stop")]
        for provider in [*self.sources, *self.engines, *self.certs, *stoppable]:
            try:
                await maybeDeferred(provider.stop)
            except Exception:
                self.log.failure("stopping {name} failed", name=getattr(provider, "name", provider))
        self.stack.addons_done(self.log)

    def listening_address(self) -> tuple[str, int] | None:
        """The (host, port) the site listens on, once it does."""
        return self.acceptor.address()

    def listener_factory(self) -> Any:
        """The protocol factory of the site's listener (one driver per role)."""
        if self.config.proxy_protocol:
            return ProxiedDownstreamFactory(self)  # a PROXY header first
        return DownstreamFactory(self)

    # --- what a change in one step means to the others ----------------------------

    def _routes_installed(self, old: RouteTable, routes: RouteTable, view: CatalogView) -> None:
        self.dialer.routes_installed(old, routes, view.destinations)
        self.l7.routes_installed(routes)
        self.recheck.routes_changed()

    def _certs_changed(self) -> None:
        self.router.certificates_changed()
        self.recheck.roots_changed()

    def _policy_changed(self) -> None:
        """Re-check open connections; close those the new policy denies."""
        self.recheck.policy_changed()

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
            "routes": len(self.router.routes),
            "active_connections": len(self.active),
            "catalog_sources": sources,
            "certificate_providers": certs,
            "engines": [e.name for e in self.engines],
            "plugins": list(self.stack.plugin_names),
            # Reported, not failing readiness: other destinations still work.
            "upstream_tls_files": destination_file_problems(
                (d for _, d in self.router.routes), self.config.base_dir
            ),
        }

    def describe_routes(self) -> dict[str, Any]:
        return {
            "site": self.name,
            "gateway": self.config.name,
            "datacenter": self.config.datacenter,
            "trust_domain": self.config.trust_domain,
            "version": self.router.routes.version,
            "routes": self.router.routes.describe(),
            # The mesh entry's HTTP options in force (L7 routes normalise paths so).
            "mesh_http": describe_mesh_http(self.router.view.mesh_http),
        }

    def describe_certificates(self) -> dict[str, Any]:
        tls = self.router.tls
        return {
            "site": self.name,
            "roots": [
                {**_cert_info(root), "trust_domain": domain}
                for domain, roots in sorted(tls.trust.roots.items())
                for root in roots
            ],
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
