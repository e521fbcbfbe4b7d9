"""An L7 connection's far side: where the splice would put the upstream, an HTTP session.

The terminating driver (:mod:`gwcore.net.terminator`) joins a client to an
``UpstreamProtocol`` through the rules of :mod:`gwcore.net.splice`. For a destination
served request by request, the site hands it an :class:`L7Session` instead: it quacks
like an ``UpstreamProtocol`` (``send``/``send_eof``, ``transport`` with the producer
methods and close, ``lost``, ``downstream``), so the driver and the splice stay as they
are and the L4 path pays nothing for L7. Decrypted client bytes go to the session's
downstream codec (:mod:`gwcore.net.l7_core`: HTTP/1.1 now, HTTP/2 by ALPN or preface);
responses go back through ``downstream.send_to_client`` (TLS, byte counts).

Flow control: the splice registers the client transport as the session's producer and
the session's transport as the client's. The codec pauses the client while a request
waits (pipelining) or its exchange's upstream cannot take more; the client transport
pauses the session (``set_client_writable(False)``) while the client reads slowly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from gwcore.net.h2_downstream import Http2Server
from gwcore.net.http1_head_timer import HeadTimer
from gwcore.net.http1_server import Http1Server
from gwcore.net.l7_core import DownstreamCodec, ExchangeStarter, L7Limits
from gwcore.net.write_batch import BATCH, HeldWrites

log = Logger(namespace="tgw.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

LINGER_SECONDS = 5.0
"""How long a connection closed after a bad request still reads (and drops) what the
client sends, so the answer is not lost to a reset (nginx: ``lingering_timeout``)."""

CODECS: dict[str, Callable[..., DownstreamCodec]] = {"HTTP/1.1": Http1Server, "HTTP/2": Http2Server}
"""Downstream codec classes by protocol; HTTP/2 registers ``"HTTP/2"`` here."""


def choose_codec(alpn: bytes | None, first: bytes) -> str:
    """The downstream protocol of a connection: ALPN ``h2``, else the HTTP/2 preface, else
    HTTP/1.1 (a protocol without a registered codec falls back to HTTP/1.1)."""
    wanted = "HTTP/2" if alpn == b"h2" or first.startswith(H2_PREFACE[: len(first)]) else ""
    if wanted and first and not alpn and len(first) < len(H2_PREFACE):
        wanted = ""  # too short to tell: only a whole preface (or ALPN) means HTTP/2
    return wanted if wanted in CODECS else "HTTP/1.1"


class _SessionTransport:
    """The splice's view of the session as a transport: producer registry and close."""

    disconnecting = False

    def __init__(self, session: L7Session) -> None:
        self.session = session
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.session.client_writable(False)

    def resumeProducing(self) -> None:
        self.session.client_writable(True)

    def loseConnection(self) -> None:
        self.session.shutdown()

    def abortConnection(self) -> None:
        self.session.shutdown()

    def loseWriteConnection(self) -> None:
        self.session.shutdown()

    def getHost(self) -> Any:
        return None


class L7Session:
    """One client connection served request by request; see the module docstring."""

    def __init__(
        self,
        starter: ExchangeStarter,
        limits: L7Limits,
        on_bad_request: Callable[[str, str], None],
        alpn: bytes | None = None,
    ) -> None:
        self.starter = starter
        self.limits = limits
        self.on_bad_request = on_bad_request
        self.alpn = alpn
        self.transport = _SessionTransport(self)
        self.downstream: Any = None  # the client's DownstreamProtocol (the splice sets it)
        self.codec: DownstreamCodec | None = None
        self.protocol = ""
        self.lost = False
        self.read_closed = False
        self._first = b""
        self._undecided: HeadTimer | None = None  # the deadline while _first waits
        self._writable = True
        # What the codec writes while one read is handled goes out as one TLS write
        # (gwcore.net.write_batch): a small response is one record, one send.
        self._out = HeldWrites(self._write_now)
        self._linger: Any = None  # the end of a lingering close (_close_lingering)

    # --- the splice's side (what an UpstreamProtocol offers) -----------------------

    def send(self, data: bytes) -> None:
        """Decrypted client bytes."""
        if self.lost:
            return
        try:
            with BATCH:
                codec = self.codec
                if codec is None:
                    codec = self._start_codec(data)
                    if codec is None:
                        return
                codec.data_received(data)
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        # A bug of ours must cost this connection, not the reactor's read loop.
        log.failure("HTTP session failed")
        self.close("internal_error")

    def send_eof(self) -> None:
        """The client finished writing."""
        if self.lost:
            return
        if self.codec is None:
            self.close("completed")
            return
        try:
            self.codec.eof_received()
        except Exception:
            self._internal_error()

    def shutdown(self) -> None:
        """The client side closes (its connection lost, a policy close, a site stop)."""
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
        if self.lost:
            return
        self._end()
        down = self.downstream
        if down is not None:
            down.upstream_lost()

    def _end(self) -> None:
        self._out.flush()
        self.lost = True
        self._decided()
        codec = self.codec
        if codec is not None:
            codec.connection_lost()

    def _close_lingering(self) -> None:
        """After a bad request's answer: close_notify and FIN, then keep reading (and
        dropping) what the client still sends for up to :data:`LINGER_SECONDS` before
        the close. Closed at once with unread bytes, the connection would be reset, and
        a client still writing its request (a 1 MiB request line) would lose the
        ``400``/``431`` it was sent (nginx's ``lingering_close`` does the same)."""
        self._end()
        down = self.downstream
        if down is None:
            return
        down.transport.resumeProducing()
        down.upstream_eof()
        if not down.lost:
            self._linger = self.limits.clock.callLater(LINGER_SECONDS, self._linger_over)

    def _linger_over(self) -> None:
        self._linger = None
        down = self.downstream
        if down is not None and not down.lost:
            down.upstream_lost()

    def drain(self) -> None:
        """Finish what is in flight, then close (the site stops or was replaced)."""
        if self.lost:
            return
        codec = self.codec
        drain = getattr(codec, "drain", None) if codec is not None else None
        if codec is None:
            self.close("shutdown")  # no request started yet
        elif drain is not None:
            drain()

    def client_writable(self, writable: bool) -> None:
        self._writable = writable
        if self.codec is not None:
            self.codec.set_client_writable(writable)

    def _start_codec(self, data: bytes) -> DownstreamCodec | None:
        if self.alpn is None and len(self._first) + len(data) < len(H2_PREFACE):
            first = self._first + data
            if H2_PREFACE.startswith(first) and "HTTP/2" in CODECS:
                self._first = first  # could still be the HTTP/2 preface: wait for more
                if self._undecided is None:
                    self._start_undecided()
                return None
        self._decided()
        self.protocol = choose_codec(self.alpn, self._first + data)
        codec = self.codec = CODECS[self.protocol](self, self.starter, self.limits)
        if not self._writable:
            codec.set_client_writable(False)
        if self._first:
            first, self._first = self._first, b""
            codec.data_received(first)
        return codec

    def _start_undecided(self) -> None:
        """No codec reads bytes that may still be the HTTP/2 preface, so no head timer
        runs: the session's own deadline, ``request_head_timeout`` from the first byte
        (a client trickling ``PRI * HTTP/2.0...`` is a slowloris like any other)."""
        timer = self._undecided = HeadTimer(
            self.limits.clock, self.limits.request_head_timeout, self._undecided_late
        )
        timer.arm(started=True)

    def _decided(self) -> None:
        timer, self._undecided = self._undecided, None
        if timer is not None:
            timer.stop()

    def _undecided_late(self) -> None:
        self._undecided = None
        if self.lost or self.codec is not None:
            return
        self.on_bad_request(
            "request_head_timeout", "no complete HTTP/2 preface or request head in time"
        )
        self.close("bad_request")

    # --- ClientLink (what the codec calls) -----------------------------------------

    def write(self, data: bytes) -> None:
        if not self.lost:
            self._out.write(data)

    def _write_now(self, data: bytes) -> None:
        down = self.downstream
        if down is not None and not self.lost:
            down.send_to_client(data)

    def pause_reading(self) -> None:
        down = self.downstream
        if down is not None and not self.lost:
            down.transport.pauseProducing()

    def resume_reading(self) -> None:
        down = self.downstream
        if down is not None and not self.lost:
            down.transport.resumeProducing()

    def close(self, cause: str) -> None:
        """End the client connection after what was written (close_notify, then FIN)."""
        down = self.downstream
        if down is not None and down.close_cause is None:
            down.close_cause = cause
        if cause == "bad_request" and not self.lost and self.limits.clock is not None:
            self._close_lingering()
            return
        self.shutdown()

    def bad_request(self, reason: str, detail: str) -> None:
        self.on_bad_request(reason, detail)

    # --- a switched connection (gwcore.net.l7_upgrade) -------------------------------

    def switch_codec(self, codec: DownstreamCodec) -> None:
        """From now on ``codec`` (an upgraded connection's tunnel) gets the client's bytes."""
        self.codec = codec
        if not self._writable:
            codec.set_client_writable(False)

    def end_writes(self) -> None:
        """Half-close toward the client (close_notify, FIN) after what was written (a
        batch may still hold it); its bytes are still read."""
        down = self.downstream
        if down is not None and not self.lost:
            self._out.flush()
            down.upstream_eof()
