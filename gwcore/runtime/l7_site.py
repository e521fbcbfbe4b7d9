"""The L7 step of a terminating site: connections to HTTP-like destinations, per request.

A connection whose destination's ``protocol`` is ``http``, ``http2`` or ``grpc``
(and that is not a ``destination.`` egress route, which stays L4) is not authorized
once and not spliced. The site's authorize step answers *allowed, decided per
request* (:data:`PER_REQUEST`), so the live re-check never closes such a connection
for a connection-level decision; its connect step hands the driver an
:class:`~gwcore.net.l7_session.L7Session` in place of the upstream connection.
Each request then runs :class:`~gwcore.runtime.l7_exchange.L7Exchange`.

The step owns the upstream pools (one :class:`~gwcore.net.http_pool.Http1Pool`
per destination, its idle connections kept per endpoint; each request's endpoint
chosen by :meth:`L7Step.plan`; connections opened through the site's dial step) and what is
counted per request: ``tgw_http_*`` metrics and one access-log record each.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gwcore.contract.metrics import service_labels
from gwcore.contract.providers import AuthzRequest
from gwcore.net.h2_upstream import Http2Pool
from gwcore.net.http_pool import Choice, Http1Pool, PoolLimits
from gwcore.net.l7_core import L7Limits, UpstreamFailure
from gwcore.net.l7_session import L7Session
from gwcore.net.proxied import ProxyHeaderFactory, caller_header
from gwcore.policy.decision import ERROR_PREFIX
from gwcore.policy.http_facts import DEFAULT_MESH_HTTP, HttpRequestFacts, MeshHttp, is_l7
from gwcore.policy.model import Decision, Destination, Endpoint, Verdict
from gwcore.policy.request_hash import NO_HASH, request_hash
from gwcore.policy.resolver_settings import HASH_POLICIES, parse_settings
from gwcore.runtime.l7_exchange import L7Exchange
from gwcore.runtime.l7_rules import PathMemo
from gwcore.runtime.l7_tunnels import LiveTunnels

if TYPE_CHECKING:
    from gwcore.contract.http_flow import HttpRequest
    from gwcore.net.l7_core import ResponseWriter

log = Logger(namespace="tgw.http")

UPSTREAM_CLIENTS: dict[str, Any] = {"http": Http1Pool, "http2": Http2Pool, "grpc": Http2Pool}
"""Upstream client (pool) class per destination protocol. A protocol is served in L7
mode only once it has one (HTTP/2 and gRPC register theirs with their codec); until
then its destinations stay L4."""

HTTP_HOOKS = (
    "tgw_http_requestheaders",
    "tgw_http_request",
    "tgw_http_responseheaders",
    "tgw_http_response",
    "tgw_http_error",
)
"""The addon hooks of an exchange (:mod:`gwcore.contract.http_flow`)."""

PER_REQUEST = Decision(Verdict.ALLOW, "l7", "decided per request")
"""The connection-level answer for an L7 connection: each request is decided anew."""


class _Starter:
    """One connection's :class:`~gwcore.net.l7_core.ExchangeStarter`, and what its
    requests share: the connection's part of every ``AuthzRequest``."""

    __slots__ = ("_authority", "_fields", "conn", "step")

    def __init__(self, step: L7Step, conn: Any) -> None:
        self.step = step
        self.conn = conn
        self._authority: Any = None
        self._fields: dict[str, Any] = {}

    def start(self, request: HttpRequest, writer: ResponseWriter) -> L7Exchange:
        return L7Exchange(self.step, self.conn, request, writer, self).begin()

    def decide(self, facts: HttpRequestFacts) -> Decision | Deferred[Decision]:
        """The decision on one request under the policy in force now (after a reload,
        the site that replaced this one's): the Decision itself when every engine
        answered at once, else a Deferred."""
        authority = self.step.site.recheck.authority()
        if authority is not self._authority:
            # What the engines read of the connection (its local address: a system
            # call) does not change while it lives; the site asking may.
            self._fields = _connection_fields(authority.authorizer.request(self.conn))
            self._authority = authority
        return authority.authorizer.answer(AuthzRequest(**self._fields, http=facts))


class _DialFor:
    """What the dial step reads of a connection, with the destination of now."""

    __slots__ = ("destination", "identity", "info", "sni")

    def __init__(self, conn: Any, destination: Destination) -> None:
        self.destination = destination
        self.identity = conn.identity
        self.info = conn.info
        self.sni = conn.sni


class L7Step:
    """The L7 step of one site; see the module docstring."""

    def __init__(self, site: Any) -> None:
        self.site = site
        config = site.config
        self.limits = L7Limits(
            max_request_headers_kb=config.max_request_headers_kb,
            request_head_timeout=config.request_head_timeout,
            clock=site.reactor,
        )
        self.pool_limits = PoolLimits(
            max_connections=config.http_max_upstream_connections,
            max_idle=config.http_max_idle_upstream_connections,
            idle_timeout=config.http_upstream_idle_timeout,
            max_pending=config.http_max_pending_requests,
        )
        # (name, subset) -> the destination's shared pool; with upstream_proxy_protocol,
        # (name, subset, id(conn)) -> one client connection's private pool.
        self.pools: dict[tuple[Any, ...], Http1Pool] = {}
        self._timeouts: dict[int, float | None] = {}
        self._addons: bool | None = None  # site.has_listeners is fixed for its life
        self.paths = PathMemo()  # recent targets' normalised paths (pure: a memo)
        self.tunnels = LiveTunnels(site)  # open WebSocket tunnels, for the re-check

    # --- entering L7 -------------------------------------------------------------

    def serves(self, conn: Any) -> bool:
        destination = conn.destination
        return (
            self.site.terminates_tls
            and destination is not None
            and not destination.egress
            and is_l7(destination.protocol)
            and destination.protocol in UPSTREAM_CLIENTS
        )

    def session(self, conn: Any) -> Deferred[Any]:
        """The far side of ``conn``: an HTTP session (as the dial step's result tuple)."""
        session = L7Session(
            _Starter(self, conn),
            self.limits,
            lambda reason, detail: self.bad_request(conn, reason, detail),
            alpn=conn.alpn,
        )
        return succeed((session, None, 0, 0.0))

    # --- what an exchange asks --------------------------------------------------

    def mesh_http(self) -> MeshHttp:
        view = self.site.catalog_view()
        return getattr(view, "mesh_http", None) or DEFAULT_MESH_HTTP

    def pool_for(self, conn: Any) -> Http1Pool:
        destination: Destination = conn.destination
        key: tuple[Any, ...] = (destination.name, destination.subset)
        if self.site.config.upstream_proxy_protocol:
            # A PROXY header names one client: its upstream connections are that
            # client's alone (HAProxy marks such connections private the same way).
            key = (*key, id(conn))
        pool = self.pools.get(key)
        if pool is None:
            site = self.site
            # HTTP/1.1 chooses each request's endpoint (per-endpoint pools, hash
            # policies); HTTP/2 multiplexes on whichever connection has room.
            per_request: dict[str, Any] = {}
            if destination.protocol == "http":
                per_request = {"plan": self.plan, "usable": self.usable}
            pool = self.pools[key] = UPSTREAM_CLIENTS[destination.protocol](
                site.reactor,
                lambda owner, factory, endpoints=None: site.dialer.connect(
                    _DialFor(owner, self.current(owner)),
                    lambda strategy: self._factory(owner, factory, strategy),
                    endpoints,
                ),
                self.pool_limits,
                lambda endpoint: site.picker.closed(destination, endpoint),
                **per_request,
            )
        return pool

    def plan(self, owner: Any, request: HttpRequest) -> Choice:
        """The endpoint order for one request of ``owner`` (docs/l7.md, "The upstream
        pool"): the site's endpoint choice, keyed by the request's hash when the
        destination's resolver has ``ring_hash``/``maglev`` with ``HashPolicies``."""
        destination = self.current(owner)
        lb = destination.load_balancer
        key: str | int | None = None
        hashed = NO_HASH
        if destination.lb_policy in HASH_POLICIES:
            if lb.hash_policies:
                info = owner.info
                hashed = request_hash(
                    lb.hash_policies,
                    request.headers,
                    request.path,
                    info.client_address,
                    info.client_port,
                )
            # No policy yielded a hash: a random endpoint, as Envoy's ring hash.
            key = "" if hashed.value is None else hashed.value
        endpoints = self.site.dialer.plan(_DialFor(owner, destination), key)
        return Choice(tuple(endpoints), hashed.value is not None, hashed.set_cookie)

    def usable(self, owner: Any) -> list[Endpoint]:
        """Every endpoint a request of ``owner`` may be sent to now (a waiting request
        takes a freed connection only to one of them)."""
        return self.site.dialer.usable(_DialFor(owner, self.current(owner)))

    def _factory(self, owner: Any, factory: Any, strategy: Any) -> Any:
        """With ``upstream_proxy_protocol`` and plain TCP, each new upstream connection
        starts with a PROXY v2 header naming ``owner`` (docs/l7.md)."""
        site = self.site
        if site.config.upstream_proxy_protocol and getattr(strategy, "name", "") == "plain":
            return ProxyHeaderFactory(
                factory.downstream, caller_header(owner, site.listening_address())
            )
        return factory

    def closed(self, conn: Any) -> None:
        """``conn`` ended: its private pool (``upstream_proxy_protocol``) closes."""
        destination = conn.destination
        if destination is None or not self.site.config.upstream_proxy_protocol:
            return
        pool = self.pools.pop((destination.name, destination.subset, id(conn)), None)
        if pool is not None:
            pool.close()

    def current(self, conn: Any) -> Destination:
        """``conn``'s destination as the live route table has it now: a connection kept
        alive for hours dials the endpoints of today, not those of its handshake (a
        route that went or moved closes the connection: runtime.recheck)."""
        routes, _ = self.site.current()
        now = routes.lookup(conn.sni) if conn.sni else None
        if now is None or now.service != conn.destination.service:
            return conn.destination
        return now

    def routes_installed(self, routes: Any) -> None:
        """A new route table: pools of destinations no longer routed close; idle
        connections to endpoints a destination no longer has close."""
        live = {(d.name, d.subset): d for _, d in routes}
        for key in list(self.pools):
            destination = live.get(key[:2])
            pool = self.pools[key]
            if destination is None:
                del self.pools[key]
                pool.close()
            else:
                pool.retain(set(self.site.dialer.dialled_endpoints(destination)))

    def ejected(self, destination: Destination, endpoint: Endpoint) -> None:
        """The dial step ejected ``endpoint`` of ``destination``: the HTTP/1.1 pools of
        that destination stop using their connections to it."""
        for key, pool in self.pools.items():
            if key[:2] == (destination.name, destination.subset) and isinstance(pool, Http1Pool):
                pool.retire(endpoint)

    def request_timeout(self, destination: Destination) -> float | None:
        """The resolver's ``RequestTimeout`` of ``destination`` (None: none)."""
        resolver = destination.resolver
        if not resolver:
            return None
        key = id(resolver)
        if key not in self._timeouts:
            settings, _ = parse_settings(resolver, "")
            self._timeouts[key] = settings.request_timeout
        return self._timeouts[key]

    def addons(self) -> bool:
        """True when an addon listens to any HTTP hook: only then is an
        :class:`~gwcore.contract.http_flow.HttpFlow` built per request."""
        if self._addons is None:
            self._addons = any(self.wants(hook) for hook in HTTP_HOOKS)
        return self._addons

    def wants(self, hook: str) -> bool:
        """True when an addon listens to ``hook`` (False for a hook this build lacks)."""
        try:
            return bool(self.site.has_listeners(hook))
        except KeyError:
            return False

    def dispatch(self, hook: str, flow: Any) -> None:
        self.site.dispatch(hook, flow)

    # --- counting ------------------------------------------------------------------

    def bad_request(self, conn: Any, reason: str, detail: str) -> None:
        site = self.site
        site.metrics.http_bad_requests.labels(site=site.name, reason=reason).inc()
        log.info(
            "bad HTTP request from {client} ({reason}): {detail}",
            client=conn.client_label(),
            reason=reason,
            detail=detail,
        )

    def denied(self, conn: Any, decision: Decision, exchange: L7Exchange) -> None:
        site = self.site
        reason = "engine_error" if decision.reason.startswith(ERROR_PREFIX) else decision.engine
        service = conn.destination.name
        site.metrics.http_denied.labels(
            site=site.name, **service_labels(conn.destination), reason=reason
        ).inc()
        log.info(
            "denied {source} -> {destination} {method} {path}: {engine}: {reason}",
            source=conn.identity,
            destination=service,
            method=exchange.request.method,
            path=exchange.path[:200],
            engine=decision.engine,
            reason=decision.reason,
        )

    def upstream_failed(self, conn: Any, failure: UpstreamFailure) -> None:
        log.info(
            "HTTP request to {service} failed ({reason}): {detail}",
            service=conn.destination.name,
            reason=failure.reason,
            detail=failure.detail,
        )

    def finished(self, exchange: L7Exchange) -> None:
        site = self.site
        conn = exchange.conn
        status = exchange.status
        code_class = f"{status // 100}xx" if status else "none"
        children = site.children
        children.http_requests(conn.destination, exchange.method_class(), code_class).inc()
        children.http_seconds(conn.destination).observe(max(0.0, _elapsed(exchange)))
        writer = site.forwarder.access_log
        if writer is None or not getattr(writer, "enabled", True):
            return
        try:
            writer(exchange.record())
        except Exception:
            log.failure("writing the access log failed")

    def drain(self, conns: Any) -> None:
        """The site stops accepting: L7 connections finish their request in flight and
        close, instead of idling until ``drain_timeout``."""
        for conn in list(conns):
            upstream = getattr(conn, "upstream", None)
            if isinstance(upstream, L7Session):
                upstream.drain()

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


def _elapsed(exchange: L7Exchange) -> float:
    return time.monotonic() - exchange.started


def _connection_fields(request: AuthzRequest) -> dict[str, Any]:
    """``request``'s fields but ``http``: an ``AuthzRequest`` per request is built from
    them (cheaper than ``dataclasses.replace``, which reads the fields each time)."""
    return {f.name: getattr(request, f.name) for f in fields(request) if f.name != "http"}
