"""The per-connection driver of a terminating site: TLS in, bytes out.

One :class:`DownstreamProtocol` per accepted TCP connection owns the OpenSSL
connection directly (memory BIOs, no wrapper protocol), so decrypted bytes go
straight to the upstream transport and encrypted bytes straight to the client,
with no intermediate buffers and no layer that could swallow a half-close.

States and the rules between them::

    HANDSHAKE ──ok──▶ AUTHORIZING ──allow──▶ CONNECTING ──up──▶ SPLICING ──▶ CLOSED
        │                  │ deny                 │ no endpoint        ▲
        └── fail ──────────┴──────────────────────┴────────────────────┘

- HANDSHAKE: bounded by ``handshake_timeout``. The servername callback routes the
  SNI; unknown or missing SNI leaves the certificate-less base context in place,
  so OpenSSL aborts without sending a certificate.
- AUTHORIZING / CONNECTING: the client socket is not read (paused); plaintext that
  already arrived is kept, at most :data:`MAX_EARLY_BYTES`, and sent first.
- SPLICING: the rules of :mod:`gwcore.net.splice` (shared with the pass-through
  driver): each transport is the other's producer (backpressure both ways).
  A close_notify or FIN from the client half-closes the upstream write side; a
  FIN from upstream sends close_notify (and FIN) to the client; reading the other
  way goes on until both directions are done. No byte is dropped or reordered:
  every write is synchronous into the peer transport, and closes flush first.
- CLOSED: exactly one access-log record and the metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from zope.interface import implementer

from gwcore.contract.events import (
    AuthorizationDone,
    ClientConnected,
    ClientHelloSeen,
    ConnectionClosed,
    ConnectionInfo,
    HandshakeDone,
)
from gwcore.net import conn_observe as observe
from gwcore.net.access_fields import next_connection_id
from gwcore.net.bio import RecordIO, pieces, record_io
from gwcore.net.first_hello import FirstHello
from gwcore.net.splice import SplicedClient, State, UpstreamProtocol, flush_bio
from gwcore.net.tls import ALPN_BY_PROTOCOL, ServerTLS
from gwcore.policy.model import Decision, Destination, Endpoint, SpiffeID, Verdict
from gwcore.policy.routes import RouteTable
from gwcore.policy.sni import normalize_sni
from gwcore.policy.spiffe import IdentityError, identity_from_der
from gwcore.policy.tlsrecords import UNRECOGNIZED_NAME_ALERT

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall

    from gwcore.contract.metrics import GatewayMetrics
    from gwcore.policy.config import SiteConfig

MAX_EARLY_BYTES = 256 * 1024
"""Plaintext a client may send before its upstream is connected; more is abuse."""

log = Logger(namespace="tgw.connection")


class Dataplane(Protocol):
    """What a connection needs from its site (implemented by ``gwcore.runtime.site.Site``)."""

    name: str
    config: SiteConfig
    metrics: GatewayMetrics
    reactor: Any
    trusted_domains: frozenset[str]

    def current(self) -> tuple[RouteTable, ServerTLS]: ...

    def has_listeners(self, hook: str) -> bool: ...

    def dispatch(self, hook: str, event: Any) -> None: ...

    def authorize(self, conn: DownstreamProtocol) -> Deferred[Decision]: ...

    def connect_upstream(
        self, conn: DownstreamProtocol
    ) -> Deferred[tuple[UpstreamProtocol, Endpoint, int, float]]: ...

    def connection_opened(self, conn: DownstreamProtocol) -> bool: ...

    def handshake_finished(self, conn: DownstreamProtocol) -> None: ...

    def connection_closed(self, conn: DownstreamProtocol) -> None:
        """``conn`` has finished; ``conn.access_record()`` describes it (built only by a
        site that logs or reports it)."""


@implementer(IHalfCloseableProtocol)
class DownstreamProtocol(SplicedClient, TwistedProtocol):
    """One mesh client's connection: handshake, identity, authorization, splice."""

    def __init__(self, site: Dataplane) -> None:
        self.site = site
        self.state = State.HANDSHAKE
        self.connection_id = next_connection_id()
        self.started = time.time()
        observe.init_facts(self)  # monotonic start, TLS and certificate fields (access log)
        self.routes, self.material = site.current()
        self.tls: SSL.Connection | None = None
        self.io: RecordIO | None = None  # the data-path calls on self.tls (gwcore.net.bio)
        self.info: ConnectionInfo | None = None
        self.sni: str | None = None
        self.destination: Destination | None = None
        self.identity: SpiffeID | None = None
        self.decision: Decision | None = None
        self.endpoint: Endpoint | None = None
        self.upstream: UpstreamProtocol | None = None
        self.attempts = 0
        self.bytes_up = 0  # client -> service
        self.bytes_down = 0  # service -> client
        self.reported_up = 0
        self.reported_down = 0
        self.handshake_seconds: float | None = None
        self.connect_seconds: float | None = None
        self.close_cause: str | None = None
        self.route_miss: str | None = None
        self.hello_veto: str | None = None
        self.verify_error: int | None = None
        self.client_eof = False  # client sent close_notify or FIN
        self.upstream_done = False  # upstream sent FIN (we sent close_notify)
        self.lost = False
        self.idle_mark = (0, 0.0)  # (bytes seen at last sweep, when they last changed)
        self._early: list[bytes] = []
        self._early_size = 0
        self._deadline: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self._finished = False
        self.close_cause_detail: str | None = None
        self.alpn: bytes | None = None  # what the client and we agreed to, if anything
        self._hello: FirstHello | None = None

    # --- accept -------------------------------------------------------------------

    def connectionMade(self) -> None:
        if not self.accept():
            return
        if self.site.has_listeners("tgw_client_connected"):
            event = ClientConnected(conn=self.info)
            self.site.dispatch("tgw_client_connected", event)
            if event.veto_reason is not None:
                self._refuse("addon_veto", f"vetoed by {event.vetoed_by}: {event.veto_reason}")
                return
        self._hello = FirstHello()  # OpenSSL starts on the route of the first hello
        self._deadline = self.site.reactor.callLater(
            self.site.config.handshake_timeout, self._handshake_expired
        )

    # --- callbacks from OpenSSL (via gwcore.runtime.site's servername/verify hooks) ------

    def on_servername(self, conn: SSL.Connection) -> None:
        # Runs again for the second ClientHello after a HelloRetryRequest: that hello
        # decides, so nothing the first one routed to survives it.
        self.sni = self.destination = self.route_miss = self.hello_veto = None
        conn.set_context(self._route(conn) or self.material.base)

    def _route(self, conn: SSL.Connection) -> SSL.Context | None:
        raw = conn.get_servername()
        sni = normalize_sni(raw)
        destination = self.routes.lookup(sni) if sni else None
        if self.site.has_listeners("tgw_tls_clienthello"):
            event = ClientHelloSeen(conn=self.info, sni=sni, destination=destination)
            self.site.dispatch("tgw_tls_clienthello", event)
            if event.veto_reason is not None:
                self.hello_veto = f"vetoed by {event.vetoed_by}: {event.veto_reason}"
                return None
            if event.rerouted_to is not None:  # an addon chose the route (events.route_to)
                raw = event.rerouted_to
                sni = normalize_sni(raw)
                destination = self.routes.lookup(sni) if sni else None
        if raw is None or sni is None:
            self.route_miss = "missing_sni" if raw is None else "invalid_sni"
            return None
        self.sni = sni
        if destination is None:
            self.route_miss = "unknown_sni"
            return None
        ctx = self.material.context_for(sni)
        if ctx is None:
            self.route_miss = "no_certificate"
            return None
        self.destination = destination
        return ctx

    def on_alpn(self, offered: list[bytes]) -> Any:
        """Pick the ALPN protocol to agree to, by the route's protocol (ALPN_BY_PROTOCOL)."""
        protocol = self.destination.protocol if self.destination is not None else "tcp"
        for candidate in ALPN_BY_PROTOCOL.get(protocol, ()):
            if candidate in offered:
                self.alpn = candidate
                return candidate
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def on_verify(self, errnum: int, ok: int, leaf: Any = None) -> bool:
        # A certificate OpenSSL refused (gwcore.net.client_verify); that ends its check.
        if leaf is not None:  # the presented leaf, for the access log even if refused
            self.peer_x509 = leaf
        self.verify_error = errnum
        return bool(ok)

    # --- bytes from the client ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        io = self.io
        if io is None:
            self.saw_bytes = True
            hello = self._hello
            if hello is None or not hello.feed(data):
                return
            self._hello = None
            self.tls, data = hello.start(self.material, self)
            io = self.io = record_io(self.tls)
        plain: list[bytes] = []  # the whole read's plaintext: one write to the service
        for piece in pieces(data):  # bounded BIO capacity (gwcore.net.bio)
            if self.state is State.SPLICING:
                self._pump_to_upstream(piece, plain)
                continue
            io.feed(piece)
            if self.state is State.HANDSHAKE:
                self._continue_handshake()
            elif self.state is not State.CLOSED:
                self._pump_early()
        if plain:
            self._send_upstream(plain)

    def _pump_to_upstream(self, piece: bytes, plain: list[bytes]) -> None:
        """Feed ``piece`` and decrypt the whole records fed so far into ``plain`` (sent
        by the caller); an end of stream sends what came before it, then half-closes."""
        io = self.io
        assert io is not None
        try:
            wrote = io.receive(piece, plain)  # one recv per whole record (gwcore.net.bio)
        except SSL.ZeroReturnError:
            self._send_upstream(plain)
            self._client_finished_writing()
            wrote = True
        except SSL.Error as e:
            plain.clear()
            self._protocol_error(e)
            return
        if wrote:  # a KeyUpdate's answer, an alert: records carrying data write nothing
            self._flush_tls()

    def _send_upstream(self, plain: list[bytes]) -> None:
        data = plain[0] if len(plain) == 1 else b"".join(plain)
        plain.clear()
        if data and self.upstream is not None:
            self.bytes_up += len(data)
            self.upstream.send(data)

    def _pump_early(self) -> None:
        io = self.io
        assert io is not None
        early = self._early
        before = len(early)
        try:
            io.decrypt(early)  # what one piece (<= BIO_FEED bytes) holds, at most
        except SSL.ZeroReturnError:
            self.client_eof = True
        except SSL.Error as e:
            self._protocol_error(e)
            return
        self._early_size += sum(map(len, early[before:]))
        if self._early_size > MAX_EARLY_BYTES:
            self._refuse(
                "early_data_overflow", "client sent too much before the upstream was ready"
            )
            return
        self._flush_tls()

    def _flush_tls(self) -> None:
        if self.tls is not None:
            flush_bio(self.tls, self.transport.write)

    def send_to_client(self, data: bytes) -> None:
        """Encrypt upstream bytes to the client (called by :class:`UpstreamProtocol`)."""
        io = self.io
        if io is None or self.lost:
            return
        self.bytes_down += len(data)
        try:
            records = io.encrypt(data)  # bounded BIO capacity (gwcore.net.bio)
        except SSL.Error as e:
            self._protocol_error(e)
            return
        if len(records) == 1:  # the usual answer: one record, one write
            self.transport.write(records[0])
        else:
            self.transport.writeSequence(records)

    # --- handshake ----------------------------------------------------------------

    def _continue_handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            self._flush_tls()
            return
        except SSL.Error as e:
            if self.route_miss == "unknown_sni":
                # RFC 6066 §3: answer an SNI we do not serve with unrecognized_name, not the
                # handshake_failure OpenSSL makes for a context without a certificate.
                flush_bio(self.tls, lambda _: None)
                self.transport.write(UNRECOGNIZED_NAME_ALERT)
            else:
                self._flush_tls()  # the alert, if OpenSSL made one
            self._handshake_failed(e)
            return
        self._flush_tls()
        self._handshake_completed()

    def _handshake_failed(self, error: Exception | None, reason: str | None = None) -> None:
        reason = reason or observe.handshake_reason(self, error)
        metrics = self.site.metrics
        metrics.handshake_errors.labels(site=self.site.name, reason=reason).inc()
        if reason in ("unknown_sni", "missing_sni", "invalid_sni", "no_certificate"):
            metrics.no_route.labels(site=self.site.name, reason=reason).inc()
        detail = self.hello_veto or (f"sni={self.sni!r}" if self.sni else "")
        log.info(
            "handshake refused: {reason} from {client} {detail}",
            reason=reason,
            client=self.client_label(),
            detail=detail,
        )
        self._close(f"handshake:{reason}", abort=False)

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self.state is State.HANDSHAKE:
            self.site.metrics.handshake_errors.labels(site=self.site.name, reason="timeout").inc()
            log.info("handshake timed out from {client}", client=self.client_label())
            self._close("handshake:timeout")

    def _handshake_completed(self) -> None:
        tls = self.tls
        assert tls is not None
        observe.handshake_completed(self, tls)
        self.site.handshake_finished(self)  # frees its handshake slot (admission)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        destination = self.destination
        if destination is None:  # cannot happen: the base context has no certificate
            self._handshake_failed(None)
            return
        cert = tls.get_peer_certificate()
        self.peer_x509 = cert  # logged even when refused
        if cert is None:
            self._handshake_failed(None)
            return
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        try:
            self.identity = identity_from_der(der, self.site.trusted_domains)
        except IdentityError as e:
            self._identity_refused(e.reason, e.detail)
            return
        # Its chain must end in its own trust domain's bundle; a resumption is
        # verified again now (expiry, roots removed since): gwcore.net.client_trust.
        refused = self.material.trust.check(tls, self.identity.trust_domain, cert, der)
        if refused is not None:
            self._identity_refused(refused, f"certificate of {self.identity.uri}")
            return
        if self.identity.kind != "service":
            # Only services are authorized here; a mesh gateway's identity never is.
            self.site.metrics.handshake_errors.labels(
                site=self.site.name, reason="not_a_service"
            ).inc()
            log.info("client identity refused: {uri} is not a service", uri=self.identity.uri)
            self._close("identity:not_a_service")
            return
        self.site.children.service(destination).connections.inc()
        self.state = State.AUTHORIZING
        self.transport.pauseProducing()
        self._pump_early()  # plaintext that came with the client's Finished
        if self.state is State.CLOSED:
            return
        if self.site.has_listeners("tgw_handshake_done"):
            event = HandshakeDone(
                conn=self.info,
                sni=self.sni or "",
                destination=destination,
                identity=self.identity,
                tls_version=tls.get_protocol_version_name(),
                cipher=tls.get_cipher_name() or "",
            )
            self.site.dispatch("tgw_handshake_done", event)
            if event.veto_reason is not None:
                self._refuse("addon_veto", f"vetoed by {event.vetoed_by}: {event.veto_reason}")
                return
        # The decision may come synchronously; _authorized then replaces _pending.
        pending = self._pending = self.site.authorize(self)
        pending.addCallback(self._authorized)
        pending.addErrback(self._pending_failed)

    def _identity_refused(self, reason: str, detail: str) -> None:
        self.site.metrics.handshake_errors.labels(site=self.site.name, reason=reason).inc()
        log.info(
            "client identity refused: {reason} from {client}: {detail}",
            reason=reason,
            client=self.client_label(),
            detail=detail,
        )
        self._close(f"identity:{reason}")

    # --- authorization and upstream -------------------------------------------

    def _authorized(self, decision: Decision) -> None:
        self._pending = None
        if self.state is State.CLOSED:
            return
        if self.site.has_listeners("tgw_authorized"):
            # Every decision is reported; a veto can only turn an allow into a deny.
            event = AuthorizationDone(
                conn=self.info,
                identity=self.identity,
                destination=self.destination,
                decision=decision,
            )
            self.site.dispatch("tgw_authorized", event)
            if decision.allowed and event.veto_reason is not None:
                decision = Decision(Verdict.DENY, f"addon:{event.vetoed_by}", event.veto_reason)
        self.decision = decision
        if not decision.allowed:
            log.info(
                "denied {source} -> {destination}: {engine}: {reason}",
                source=self.identity,
                destination=self.destination.name if self.destination else "?",
                engine=decision.engine,
                reason=decision.reason,
            )
            self._refuse("denied", None)
            return
        self.state = State.CONNECTING
        pending = self._pending = self.site.connect_upstream(self)
        pending.addCallbacks(self._upstream_ready, self._upstream_failed)
        pending.addErrback(self._pending_failed)

    def _upstream_failed(self, failure: Any) -> None:
        self._pending = None
        if self.state is State.CLOSED:
            return
        reason = getattr(failure.value, "reason", "error")
        self.endpoint_tried = getattr(failure.value, "endpoint", None)
        self.close_cause_detail = str(failure.value)
        self._refuse("no_strategy" if reason == "no_strategy" else "upstream_unavailable", None)

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

    # --- closing --------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """TCP FIN from the client (with or without close_notify before it)."""
        if self.state is State.HANDSHAKE:
            observe.fin_in_handshake(self)  # a bare TCP connect is no TLS failure
            return
        self._client_finished_writing()

    def _send_close_notify(self) -> None:
        tls = self.tls
        if tls is None or self.state is State.HANDSHAKE:
            return
        with contextlib.suppress(SSL.Error):
            tls.shutdown()
        self._flush_tls()

    def upstream_tls_failed(self, reason: str, detail: str) -> None:
        """The service's TLS failed after the handshake (e.g. it refused our client cert)."""
        service = self.destination.name if self.destination else "?"
        errors = self.site.metrics.upstream_tls_errors
        self.site.children.of(errors, self.destination, reason=reason).inc()
        log.warn(
            "upstream TLS of {service} failed: {reason}: {detail}",
            service=service,
            reason=reason,
            detail=detail,
        )
        self.close_cause_detail = detail
        if self.close_cause is None:
            self.close_cause = f"upstream_{reason}"

    def close_idle(self) -> None:
        """Called by the site's sweep when no byte moved for ``idle_timeout``."""
        if self.destination is not None:
            self.site.children.of(self.site.metrics.idle_timeouts, self.destination).inc()
        self.close(cause="idle_timeout")

    def _refuse(self, reason: str, detail: str | None) -> None:
        self.site.metrics.rejected.labels(site=self.site.name, reason=reason).inc()
        if detail:
            log.info("refused {client}: {detail}", client=self.client_label(), detail=detail)
        self.close(reason)

    def _protocol_error(self, error: Exception) -> None:
        log.info("TLS error from {client}: {error}", client=self.client_label(), error=error)
        self._close("tls_error", abort=True)

    def connectionLost(self, reason: Any = None) -> None:
        if self.state is State.HANDSHAKE and self.close_cause is None:
            observe.handshake_abandoned(self)  # or a bare TCP connect: no_data
        super().connectionLost(reason)

    def _finishing(self) -> None:
        observe.leaf_if_unfinished(self)
        self.tls = self.io = None

    # --- reporting ------------------------------------------------------------

    def record_fields(self) -> dict[str, Any]:
        return observe.record_fields(self)

    def closed_event(self, record: dict[str, Any]) -> ConnectionClosed | None:
        return ConnectionClosed(conn=self.info, record=record) if self.info is not None else None


class DownstreamFactory(Factory):
    """Builds one :class:`DownstreamProtocol` per accepted connection of a site."""

    noisy = False

    def __init__(
        self, site: Dataplane, on_build: Callable[[DownstreamProtocol], None] | None = None
    ) -> None:
        self.site = site
        self._on_build = on_build

    def buildProtocol(self, addr: Any) -> DownstreamProtocol:
        proto = DownstreamProtocol(self.site)
        proto.factory = self
        if self._on_build is not None:
            self._on_build(proto)
        return proto
