"""The per-connection driver of a mesh site: read the ClientHello, route, splice untouched.

A mesh gateway never terminates TLS and holds no key: the client's session ends at
whatever terminates it further on (a terminating gateway, a sidecar), possibly in
another datacenter. States and the rules between them::

    HANDSHAKE ──routed──▶ CONNECTING ──up──▶ SPLICING ──▶ CLOSED
        │ bad hello / no route    │ unreachable       ▲
        └─────────────────────────┴───────────────────┘

- HANDSHAKE (reading the ClientHello): bounded by ``handshake_timeout`` and by the
  parser's byte bound (:mod:`gwcore.policy.clienthello`). Garbage, a truncated, an
  oversized or an SNI-less hello is dropped and counted
  (``tgw_mesh_bad_clienthello_total{reason}``); a name with no route
  (:mod:`gwcore.policy.mesh`) is closed and counted (``tgw_mesh_no_route_total``).
  Nothing is ever sent to such a client.
- CONNECTING: the client is not read; the bytes already read wait (bounded by the
  parser's bound plus one read) and go first, unchanged.
- SPLICING and CLOSED: :mod:`gwcore.net.splice`, with plain FIN as the end of
  stream (the client's own TLS close_notify travels as bytes like any other).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from zope.interface import implementer

from gwcore.contract.events import ConnectionClosed, ConnectionInfo
from gwcore.net.access_fields import next_connection_id
from gwcore.net.splice import SplicedClient, State, UpstreamProtocol
from gwcore.policy.clienthello import NEED_MORE, ClientHello, ClientHelloParser, HelloError
from gwcore.policy.mesh import MeshRoute, NoRoute, route_by_sni
from gwcore.policy.sni import normalize_sni

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from gwcore.policy.model import Destination, Endpoint

log = Logger(namespace="tgw.mesh")


@implementer(IHalfCloseableProtocol)
class PassthroughProtocol(SplicedClient, TwistedProtocol):
    """One connection through a mesh site (see the module docstring).

    ``site`` is a :class:`gwcore.runtime.mesh_site.MeshSite`: it supplies the route table and
    mesh gateways (read once, at accept), ``connect_upstream`` and the metrics.
    """

    identity = None  # a mesh site never sees the client's identity
    decision = None

    def __init__(self, site: Any) -> None:
        self._init_splice()
        self.site = site
        self.state = State.HANDSHAKE
        self.connection_id = next_connection_id()
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.routes, _ = site.current()
        self.gateways = site.catalog_view().mesh_gateways
        self.info: ConnectionInfo | None = None
        self.parser = ClientHelloParser(site.max_client_hello)
        self.hello: ClientHello | None = None
        self.sni: str | None = None
        self.route: MeshRoute | None = None
        self.destination: Destination | None = None  # what is dialled (for the site)
        self.endpoint: Endpoint | None = None
        self.attempts = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.reported_up = 0
        self.reported_down = 0
        self.connect_seconds: float | None = None
        self.close_cause_detail: str | None = None
        self.idle_mark = (0, 0.0)
        self._early: list[bytes] = []
        self._deadline: IDelayedCall | None = None

    # --- accept -------------------------------------------------------------------

    def connectionMade(self) -> None:
        if not self.accept():
            return
        self._deadline = self.site.reactor.callLater(
            self.site.config.handshake_timeout, self._hello_expired
        )

    # --- bytes from the client ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is State.SPLICING:
            upstream = self.upstream
            assert upstream is not None
            self.bytes_up += len(data)
            upstream.send(data)
            return
        if state is not State.HANDSHAKE:
            # Already paused; a read in flight while pausing is kept in order.
            if state is State.CONNECTING:
                self._early.append(data)
            return
        self._early.append(data)
        result = self.parser.feed(data)
        if result is NEED_MORE:
            return
        if isinstance(result, HelloError):
            self._bad_hello(result.reason, result.detail)
            return
        assert isinstance(result, ClientHello)
        self.hello = result
        self.site.handshake_finished(self)  # frees its handshake slot (admission)
        self._route(result)

    def _route(self, hello: ClientHello) -> None:
        if hello.server_name is None:
            self._bad_hello("no_sni", "the ClientHello has no server_name")
            return
        sni = normalize_sni(hello.server_name)
        if sni is None:
            self._bad_hello("invalid_sni", f"unusable server name {hello.server_name[:80]!r}")
            return
        self.sni = sni
        dc, td = self.site.config.datacenter, self.site.config.trust_domain
        wan_fed = getattr(self.site, "wan_federation", False)
        route = route_by_sni(sni, dc, td, self.routes, self.gateways, wan_fed)
        if isinstance(route, NoRoute):
            self.site.mesh_no_route(route.reason)
            log.info(
                "no route for {sni} from {client}: {detail}",
                sni=sni,
                client=self.client_label(),
                detail=route.detail,
            )
            self._close(f"no_route:{route.reason}")
            return
        self.route = route
        self.destination = route.target
        self._stop_waiting()
        self.site.mesh_routed(route)
        self.state = State.CONNECTING
        self.transport.pauseProducing()
        pending = self._pending = self.site.connect_upstream(self)
        pending.addCallbacks(self._upstream_ready, self._upstream_failed)
        pending.addErrback(self._pending_failed)

    def _bad_hello(self, reason: str, detail: str) -> None:
        self.site.mesh_bad_hello(reason)
        log.info(
            "dropped {client}: bad ClientHello ({reason}): {detail}",
            client=self.client_label(),
            reason=reason,
            detail=detail,
        )
        self._early = []
        self._close(f"bad_clienthello:{reason}")

    def _hello_expired(self) -> None:
        self._deadline = None
        if self.state is State.HANDSHAKE:
            self._bad_hello("timeout", "no complete ClientHello before handshake_timeout")

    # --- upstream -------------------------------------------------------------------

    def _upstream_ready(self, result: tuple[UpstreamProtocol, Endpoint, int, float]) -> None:
        self._pending = None
        upstream, endpoint, attempts, seconds = result
        if self.state is State.CLOSED:
            upstream.transport.loseConnection()
            return
        self.upstream, self.endpoint = upstream, endpoint
        self.attempts, self.connect_seconds = attempts, seconds
        upstream.downstream = self
        self.state = State.SPLICING
        early, self._early = self._early, []
        self._splice(upstream, early)

    def _upstream_failed(self, failure: Any) -> None:
        self._pending = None
        if self.state is State.CLOSED:
            return
        self.endpoint_tried = getattr(failure.value, "endpoint", None)
        self.close_cause_detail = str(failure.value)
        self.site.metrics.rejected.labels(site=self.site.name, reason="upstream_unavailable").inc()
        self._close("upstream_unavailable")

    def send_to_client(self, data: bytes) -> None:
        """Upstream bytes to the client, untouched (called by :class:`UpstreamProtocol`)."""
        if self.lost:
            return
        self.bytes_down += len(data)
        self.transport.write(data)

    # --- closing --------------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """FIN from the client."""
        if self.state is State.HANDSHAKE:
            if self.parser.examined == 0:
                # Connected and left without a byte: a TCP health check, not a bad hello.
                self._close("client_closed")
                return
            result = self.parser.eof()
            reason = result.reason if isinstance(result, HelloError) else "truncated"
            self._bad_hello(reason, "the client closed before its ClientHello was complete")
            return
        self._client_finished_writing()

    def connectionLost(self, reason: Any = None) -> None:
        if self.state is State.HANDSHAKE and self.close_cause is None and self.parser.examined:
            self.site.mesh_bad_hello("truncated")
            self.close_cause = "bad_clienthello:truncated"
        super().connectionLost(reason)

    def close_idle(self) -> None:
        self.close(cause="idle_timeout")

    # --- reporting --------------------------------------------------------------------

    def record_fields(self) -> dict[str, Any]:
        """The route: the datacenter addressed and whether it was reached through its
        mesh gateways. ``source`` is always null: a mesh site never sees the identity."""
        route = self.route
        return {
            "source": None,
            "destination": route.service.name if route else None,
            "datacenter": route.datacenter if route else None,
            "via": ("mesh_gateways" if route.remote else "local") if route else None,
        }

    def closed_event(self, record: dict[str, Any]) -> ConnectionClosed | None:
        return ConnectionClosed(conn=self.info, record=record) if self.info is not None else None


class PassthroughFactory(Factory):
    """Builds one :class:`PassthroughProtocol` per accepted connection of a mesh site."""

    noisy = False

    def __init__(self, site: Any) -> None:
        self.site = site

    def buildProtocol(self, addr: Any) -> PassthroughProtocol:
        proto = PassthroughProtocol(self.site)
        proto.factory = self
        return proto
