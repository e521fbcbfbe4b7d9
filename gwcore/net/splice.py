"""The splice: a client connection and an upstream connection joined, with flow control.

Shared by the terminating driver (:mod:`gwcore.net.terminator`, TLS ends at the
gateway) and the pass-through driver (:mod:`gwcore.net.passthrough`, bytes
untouched). Rules:

- Each transport is the other's producer (:class:`_PauseOnly`): a slow reader
  pauses the writer, both ways. Nothing is buffered without bound.
- The client finishing its writes (FIN, or TLS close_notify) half-closes the
  upstream's write side (``UpstreamProtocol.send_eof``); the upstream finishing
  (FIN) is passed to the client (``_send_close_notify`` first, for TLS, then FIN).
  Reading the other way goes on until both directions are done.
- Either side being lost closes the other, after what was written is flushed.
  With nothing buffered a close (or half-close) happens at once
  (:func:`gwcore.net.fasttcp.lose_connection`), so the other side's
  ``connectionLost`` may run inside the call: state is settled before each close.
- A producer is unregistered (:func:`_release`) before its transport is
  (half-)closed, or Twisted would never finish the close of a paused transport.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from zope.interface import implementer

from gwcore.net.access_fields import address_of, complete, host_port, process_fields, rfc3339
from gwcore.net.bio import BIO_CHUNK
from gwcore.net.fasttcp import keep_local_address, lose_connection, lose_write_connection

_log = Logger(namespace="tgw.connection")


def flush_bio(tls: Any, write: Any) -> None:
    """Move everything OpenSSL wrote into its memory BIO to ``write`` (the socket).

    A read shorter than the chunk means the BIO is empty, which saves the call that
    would only raise ``WantReadError``.
    """
    while True:
        try:
            data = tls.bio_read(BIO_CHUNK)
        except SSL.WantReadError:
            return
        write(data)
        if len(data) < BIO_CHUNK:
            return


class State(enum.Enum):
    """A client connection's state. The pass-through driver uses ``HANDSHAKE`` while it
    reads the ClientHello and skips ``AUTHORIZING``."""

    HANDSHAKE = "handshake"
    AUTHORIZING = "authorizing"
    CONNECTING = "connecting"
    SPLICING = "splicing"
    CLOSED = "closed"


@implementer(IPushProducer)
class _PauseOnly:
    """Registers a transport as its peer's producer for flow control only.

    ``stopProducing`` is deliberately inert: closing is decided by the splice
    (which must send close_notify and flush first), not by Twisted tearing down
    the peer when one side disconnects.
    """

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        return None


def _release(transport: Any) -> None:
    """Unregister ``transport``'s producer before (half-)closing it.

    Twisted will not finish closing a transport whose producer is registered and
    paused, and a paused peer would never notice its own close; so the peer is
    resumed as it is released, unless it has already read its end of stream (a
    client or upstream that sent FIN: reading it again only finds the same end, at
    the cost of an epoll registration, a wake-up and a ``recv`` per connection).
    """
    producer = getattr(transport, "producer", None)
    if producer is None:
        return
    transport.unregisterProducer()
    if isinstance(producer, _PauseOnly):
        peer = producer.transport
        if not (
            getattr(peer, "read_closed", False)  # gwcore.net.fasttcp transports
            or getattr(getattr(peer, "protocol", None), "read_closed", False)
        ):
            peer.resumeProducing()


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(TwistedProtocol):
    """The gateway's connection to the next hop, spliced to one client."""

    downstream: Any = None  # the SplicedClient, attached once this connection is chosen
    connected_at: float = 0.0
    read_closed = False
    lost = False

    def connectionMade(self) -> None:
        # The splice calls send/send_eof; for plain TCP they are the transport's own.
        self.send = self.transport.write

    def send(self, data: bytes) -> None:
        """Write client bytes to the service (replaced per connection for speed)."""
        self.transport.write(data)

    def send_eof(self) -> None:
        """The client finished writing: half-close towards the service."""
        lose_write_connection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        down = self.downstream
        if down is not None:
            down.send_to_client(data)

    def readConnectionLost(self) -> None:
        self.read_closed = True
        if self.downstream is not None:
            self.downstream.upstream_eof()

    def writeConnectionLost(self) -> None:
        return None

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        if self.downstream is not None:
            self.downstream.upstream_lost()


class UpstreamFactory(Factory):
    protocol = UpstreamProtocol
    noisy = False

    def __init__(self, downstream: Any) -> None:
        self.downstream = downstream

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        # The downstream is attached only once the connection is chosen, so a
        # losing attempt can never write to the client.
        return UpstreamProtocol()


class SplicedClient:
    """The client end of a splice: the half-close and close rules of the module docstring.

    A driver protocol mixes this in (before ``Protocol``) and provides the attributes
    set in :meth:`_init_splice` plus ``transport``, ``state`` (a :class:`State`),
    ``bytes_up``, ``site`` (with ``connection_closed``) and
    ``access_record()``. It overrides :meth:`_send_close_notify` when the client
    side speaks TLS, and :meth:`_finishing` to drop per-connection state.
    """

    upstream: UpstreamProtocol | None
    client_eof: bool
    upstream_done: bool
    lost: bool
    close_cause: str | None
    bytes_up: int
    transport: Any
    site: Any
    state: State
    _deadline: Any
    _pending: Any
    _finished: bool
    info: Any
    connection_id: int
    started: float
    sni: str | None
    endpoint: Any
    bytes_down: int
    connect_seconds: float | None
    attempts: int
    close_cause_detail: str | None

    def _init_splice(self) -> None:
        self.upstream = None
        self.client_eof = False  # the client finished writing (FIN or close_notify)
        self.upstream_done = False  # the upstream finished (we passed it on)
        self.lost = False
        self.close_cause = None
        self._deadline = None
        self._pending = None
        self._finished = False

    # hooks ----------------------------------------------------------------------

    def _send_close_notify(self) -> None:
        """End the client's stream at the protocol level before FIN (TLS: close_notify)."""
        return None

    def _finishing(self) -> None:
        """Both transports are gone; drop state before the site records the connection."""
        return None

    # splicing -------------------------------------------------------------------

    def _splice(self, upstream: UpstreamProtocol, early: list[bytes]) -> None:
        """Join ``upstream`` (already attached and ``SPLICING``): send ``early`` bytes first."""
        keep_local_address(upstream.transport, self._recorded)
        for chunk in early:
            self.bytes_up += len(chunk)
            upstream.send(chunk)
        upstream.transport.registerProducer(_PauseOnly(self.transport), True)
        self.transport.registerProducer(_PauseOnly(upstream.transport), True)
        if self.client_eof:
            _release(upstream.transport)
            upstream.send_eof()
        if self.lost:
            lose_connection(upstream.transport)
            return
        self.transport.resumeProducing()

    def _client_finished_writing(self) -> None:
        if self.client_eof:
            return
        self.client_eof = True
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            _release(upstream.transport)
            upstream.send_eof()
        self._maybe_done()

    def writeConnectionLost(self) -> None:
        return None

    def upstream_eof(self) -> None:
        """The upstream finished sending: pass the end of stream (and FIN) to the client."""
        if self.upstream_done:
            return
        self.upstream_done = True
        if not self.lost:
            self._send_close_notify()
            _release(self.transport)
            lose_write_connection(self.transport)
        self._maybe_done()

    def upstream_lost(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            upstream.downstream = None
        if not self.upstream_done:
            self.upstream_done = True
            if not self.lost:
                self._send_close_notify()
        if self.close_cause is None:
            self.close_cause = "upstream_closed"
        if not self.lost:
            _release(self.transport)
            lose_connection(self.transport)
        self._maybe_finish()

    def _maybe_done(self) -> None:
        if self.client_eof and self.upstream_done:
            if self.close_cause is None:
                self.close_cause = "completed"
            if self.upstream is not None and not self.upstream.lost:
                _release(self.upstream.transport)
                lose_connection(self.upstream.transport)
            if not self.lost:
                _release(self.transport)
                lose_connection(self.transport)

    # closing --------------------------------------------------------------------

    def close(self, cause: str) -> None:
        """Close both sides, flushing what was already written (used for shutdown/policy)."""
        if self.close_cause is None:
            self.close_cause = cause
        if not self.lost:
            self._send_close_notify()
        self._close(cause)

    def close_for_addon(self, reason: str) -> None:
        """An addon closes this connection (``ConnectionInfo.close``)."""
        if self.state is State.CLOSED or self.close_cause is not None:
            return  # already ending: the first cause stays
        self.close_cause_detail = reason
        self.site.metrics.rejected.labels(site=self.site.name, reason="addon_close").inc()
        _log.info(
            "closing {client} for an addon: {reason}", client=self.client_label(), reason=reason
        )
        self.close("addon_close")

    def _close(self, cause: str, abort: bool = False) -> None:
        if self.close_cause is None:
            self.close_cause = cause
        self.state = State.CLOSED
        self._stop_waiting()
        if self.upstream is not None and not self.upstream.lost:
            _release(self.upstream.transport)
            if abort:
                self.upstream.transport.abortConnection()
            else:
                lose_connection(self.upstream.transport)
        if not self.lost:
            _release(self.transport)
            if abort:
                self.transport.abortConnection()
            else:
                lose_connection(self.transport)

    def _stop_waiting(self) -> None:
        """Cancel the deadline and whatever Deferred the connection waits on."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        if self.close_cause is None:
            self.close_cause = "client_closed"
        self._stop_waiting()
        self.state = State.CLOSED  # before the upstream's close, which may finish at once
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            _release(upstream.transport)
            lose_connection(upstream.transport)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._finished or not self.lost:
            return
        if self.upstream is not None and not self.upstream.lost:
            return
        self._finished = True
        if self.upstream is not None:
            self.upstream.downstream = None
        self._finishing()
        self.site.connection_closed(self)

    def accept(self) -> bool:
        """At ``connectionMade``: describe the connection and ask the site to admit it.

        Returns ``False`` (after aborting the socket, cause ``overflow``) when the
        site is at ``max_connections``.
        """
        from gwcore.contract.events import ConnectionInfo

        peer = self.transport.getPeer()
        keep_local_address(self.transport, self._recorded)  # the local address, read when needed
        self.info = ConnectionInfo(
            site=self.site.name,
            connection_id=self.connection_id,
            client_address=getattr(peer, "host", str(peer)),
            client_port=getattr(peer, "port", 0),
            started=self.started,
            closer=self.close_for_addon,
        )
        if not self.site.connection_opened(self):
            self.close_cause = "overflow"
            self.transport.abortConnection()
            return False
        return True

    def _recorded(self) -> bool:
        """Whether this connection's access record will be built (its socket addresses
        are then read before the sockets close)."""
        wanted = getattr(self.site, "records_wanted", None)
        return True if wanted is None else bool(wanted(self))

    def _pending_failed(self, failure: Any) -> None:
        """The client left while we were waiting (cancelled), or a bug: never unhandled."""
        if failure.check(CancelledError):
            return
        _log.failure("connection {id} failed", failure, id=self.connection_id)
        self._close("internal_error", abort=True)

    def client_label(self) -> str:
        if self.info is None:
            return "?"
        return host_port(self.info.client_address, self.info.client_port) or "?"

    def access_record(self) -> dict[str, Any]:
        """The JSON access-log record (also the ``tgw_connection_closed`` payload): every
        key of :data:`~gwcore.net.access_fields.RECORD_KEYS`, ``null`` when unknown."""
        started = self.started
        endpoint = self.endpoint or getattr(self, "endpoint_tried", None)
        meta = endpoint.meta if endpoint is not None else {}
        start_time = rfc3339(started)
        duration = time.monotonic() - getattr(self, "started_monotonic", time.monotonic())
        record: dict[str, Any] = {
            "time": start_time,
            "record_type": "closed",
            "start_time": start_time,
            "end_time": rfc3339(started + duration),
            "site": self.site.name,
            "connection_id": self.connection_id,
            **process_fields(),
            "client": self.client_label() if self.info is not None else None,
            "downstream_local_address": address_of(self.transport, local=True),
            "sni": self.sni,
            **self.record_fields(),
            "upstream_host": str(endpoint) if endpoint is not None else None,
            "endpoint": str(self.endpoint) if self.endpoint else None,
            "endpoint_hostname": meta.get("hostname") if "address_source" in meta else None,
            "endpoint_source": meta.get("address_source"),
            "upstream_local_address": address_of(self.upstream.transport, local=True)
            if self.upstream is not None
            else None,
            "bytes_upstream": self.bytes_up,
            "bytes_downstream": self.bytes_down,
            "duration_seconds": round(duration, 6),
            "connect_seconds": round(self.connect_seconds, 6) if self.connect_seconds else None,
            "connect_attempts": self.attempts,
            "close_cause": self.close_cause,
            "close_detail": self.close_cause_detail or None,
            "annotations": dict(self.info.annotations)
            if self.info is not None and self.info.annotations
            else None,
        }
        return complete(record)

    def record_fields(self) -> dict[str, Any]:
        """Driver-specific access-log fields (who, what was decided, where to)."""
        return {}
