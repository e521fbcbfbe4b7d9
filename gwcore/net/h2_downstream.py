"""The HTTP/2 downstream codec: one client connection's streams, with ``h2``.

Chosen by the L7 session for ``http2``/``grpc`` destinations when ALPN agreed ``h2``
or the client sent the prior-knowledge preface (:mod:`gwcore.net.l7_session`); it
is a :class:`~gwcore.net.l7_core.DownstreamCodec`, so each stream is one exchange of
the core, many at once. Rules (with :mod:`gwcore.net.h2_link`'s flow control):

- SETTINGS we send: at most :data:`~gwcore.net.h2_link.MAX_CONCURRENT_STREAMS`
  streams, a header list of at most ``max_request_headers_kb`` KiB (Consul's
  ``MaxRequestHeadersKB``), our stream/connection windows, no server push.
- A stream's request body is held (unacknowledged, so bounded by our window) until
  its exchange asks for it (``resumeProducing``, once the upstream stream exists);
  DATA is acknowledged only while the exchange keeps taking it. A denied or answered
  request never has its body read upstream; once the answer ended, the stream is
  reset with NO_ERROR if the client is still sending (RFC 9113 §8.1).
- A response's DATA waits in the stream's queue while the windows or the client's
  transport are full; then the exchange's response producer (the upstream stream)
  is paused, so the service is stalled through its own windows.
- A request head the exchange cannot use (a missing pseudo-header, CONNECT) is a
  stream error: RST_STREAM PROTOCOL_ERROR, counted as a bad request. A peer breaking
  HTTP/2 itself (bad framing, an oversize header list, flow-control violations) is a
  connection error: GOAWAY, counted, one log line. So is a header block not complete
  within ``request_head_timeout`` (a slowloris; :mod:`gwcore.net.h2_head_timer`).
- gRPC: a locally made answer (no ``application/grpc`` content type) to a gRPC
  request is sent trailers-only, as Envoy's local replies are: ``:status 200``,
  ``grpc-status`` mapped from the HTTP status (403 → 7 PERMISSION_DENIED) and the
  body as ``grpc-message`` (:func:`gwcore.policy.http2_rules.grpc_local_reply`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h2.events
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from gwcore.contract.http_flow import Headers, HttpRequest
from gwcore.net.h2_abuse import FrameBudget, ResetBudget
from gwcore.net.h2_head_timer import H2HeadTimer
from gwcore.net.h2_link import H2Link, H2Stream, HeaderList
from gwcore.policy import http2_rules
from gwcore.policy.http_method import BAD_METHOD, miscased_method

if TYPE_CHECKING:
    from gwcore.contract.http_flow import HttpResponse
    from gwcore.net.l7_core import ClientLink, Exchange, ExchangeStarter, L7Limits, Producer

GRPC_MESSAGE_LIMIT = 1024
"""Bytes of a local reply's body kept as its ``grpc-message``."""


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _wire(headers: Headers) -> HeaderList:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class Http2Server(H2Link):
    """One client connection's HTTP/2 framing; see the module docstring."""

    protocol = "HTTP/2"
    client_side = False

    def __init__(self, link: ClientLink, starter: ExchangeStarter, limits: L7Limits) -> None:
        super().__init__(
            max_header_list_size=limits.max_request_headers_kb * 1024,
            on_protocol_error=link.bad_request,
        )
        self.link = link
        self.starter = starter
        self.requests = 0
        self.resets = ResetBudget()
        self.frames = FrameBudget()
        self.head_timer = H2HeadTimer(limits.clock, limits.request_head_timeout, self._head_late)
        self.start()

    # --- DownstreamCodec --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        progressed = self.receive(data)
        if not self.closed:
            self.head_timer.after_read(self.conn.incoming_buffer, progressed)

    def _head_late(self) -> None:
        # A header block still open at the deadline: a connection error (h2_head_timer).
        self.protocol_error(
            "request_head_timeout",
            f"no complete HTTP/2 header block in {self.head_timer.timeout:g}s",
        )

    def eof_received(self) -> None:
        # The client stopped writing: streams in flight may still be answered, but
        # no new request can come; close once they are done.
        self.eof = True
        if not self.streams:
            self.close_out("completed")

    def connection_lost(self) -> None:
        self.head_timer.cancel()
        self.lost()

    def drain(self) -> None:
        """The site stops: GOAWAY (NO_ERROR, last stream = the newest one seen), finish
        the streams in flight, refuse newer ones, close when none is left.

        ``h2`` accepts nothing more once it sent a GOAWAY itself, so the frame is
        written here, beside its state machine; streams it already knows go on.
        """
        if self.closed or self.draining:
            return
        self.draining = True
        self.flush()
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.conn.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self.write_out(goaway.serialize())
        if not self.streams:
            self.close_out("shutdown")

    # --- H2Link -----------------------------------------------------------------------

    eof = False

    def write_out(self, data: bytes) -> None:
        self.link.write(data)

    def close_out(self, cause: str) -> None:
        self.closed = True
        self.head_timer.cancel()
        self.link.close(cause)

    draining = False

    def stream_closed(self) -> None:
        if (self.eof or self.draining) and not self.streams and not self.closed:
            self.close_out("shutdown" if self.draining else "completed")

    def handle(self, event: h2.events.Event) -> None:
        abuse = self._abuse(event)
        if abuse is not None:
            self.protocol_error("abuse", abuse)
            return
        super().handle(event)

    def _abuse(self, event: h2.events.Event) -> str | None:
        """Why ``event`` makes this client abusive (``h2_abuse``), or None."""
        frames = self.frames
        if isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams and self.resets.premature_reset():
                return self.resets.detail()
        elif isinstance(event, h2.events.DataReceived):
            return frames.data_frame(not event.data and event.stream_ended is None)
        elif isinstance(event, (h2.events.RequestReceived, h2.events.TrailersReceived)):
            frames.payload_frame()
        elif isinstance(event, (h2.events.PingReceived, h2.events.RemoteSettingsChanged)):
            return frames.control_ack(self.paused)
        elif isinstance(event, h2.events.PriorityUpdated):
            return frames.priority(self.resets.opened)
        elif isinstance(event, h2.events.WindowUpdated):
            return frames.window_update(self.resets.opened, self.data_frames_sent)
        return None

    def set_client_writable(self, writable: bool) -> None:
        if writable:
            self.frames.client_reads()
        self.set_writable(writable)

    def other_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = H2Stream(self, event.stream_id)
            self.streams[event.stream_id] = stream
            if self.draining:  # newer than our GOAWAY's last stream: never processed
                stream.reset(ErrorCodes.REFUSED_STREAM)
                return
            self.resets.stream_opened()
            if event.stream_id in self.reset_in_batch:
                return  # reset before its decision: no exchange, authorization or log
            self.requests += 1
            head = list(event.headers or ())
            request = request_from_head(head)
            if isinstance(request, str):
                self.link.bad_request(request, f"HTTP/2 stream {event.stream_id}")
                stream.reset(ErrorCodes.PROTOCOL_ERROR)
                return
            if event.stream_ended is not None:
                request.body = b""  # the head ended the stream: known to have no body
            served = _ServerStream(self, stream, http2_rules.is_grpc(head))
            served.head_only = request.method == "HEAD"
            stream.peer = served
            served.exchange = self.starter.start(request, served)
            served.exchange.request_producer = served


def request_from_head(head: HeaderList) -> HttpRequest | str:
    """The framing-neutral request of an HTTP/2 head, or why it is refused."""
    facts = http2_rules.request_facts(head)
    if isinstance(facts, str):
        return facts
    if miscased_method(facts.method):
        return BAD_METHOD
    return HttpRequest(
        method=facts.method,
        path=facts.path,
        authority=facts.authority,
        scheme=facts.scheme,
        http_version="HTTP/2",
        headers=Headers(facts.headers),
    )


class _ServerStream:
    """One stream: the exchange's writer, the producer of its request body, and the
    peer of the stream's events (module docstring)."""

    def __init__(self, server: Http2Server, stream: H2Stream, grpc: bool) -> None:
        self.server = server
        self.stream = stream
        self.grpc = grpc
        self.exchange: Exchange | None = None
        self.paused = True  # the body is read once the exchange asks for it
        self._held: list[tuple[bytes, int]] = []
        self._owed = 0
        self._ended = False
        self._end_delivered = False
        self._trailers: Headers | None = None
        self._gone = False
        self._response_producer: Producer | None = None
        self._response_paused = False
        self._local: tuple[int, bytearray] | None = None  # a gRPC local reply's status, body
        self._answered = False
        self.head_only = False  # a HEAD request: its response has no DATA

    # --- the request body (Producer for the exchange) ---------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._owed:
            owed, self._owed = self._owed, 0
            self.stream.ack(owed)
        while self._held and not self.paused and not self._gone:
            data, flow = self._held.pop(0)
            self._deliver(data, flow)
        if not self._held and self._ended and not self._end_delivered and not self.paused:
            self._deliver_end()

    def stopProducing(self) -> None:
        self.paused = True

    def _deliver(self, data: bytes, flow: int) -> None:
        assert self.exchange is not None
        self.exchange.request_data(data)
        if self.paused:
            self._owed += flow
        else:
            self.stream.ack(flow)

    def _deliver_end(self) -> None:
        assert self.exchange is not None
        self._end_delivered = True
        self.exchange.request_end(self._trailers)

    # --- StreamPeer (events of the client's stream) -----------------------------------

    def headers_received(self, headers: HeaderList) -> None:  # requests arrive as heads
        return None

    def data_received(self, data: bytes, flow_length: int) -> None:
        if self._answered:
            self.stream.ack(flow_length)  # answered already: read and drop
        elif self.paused or self._held:
            self._held.append((data, flow_length))
        else:
            self._deliver(data, flow_length)

    def trailers_received(self, headers: HeaderList) -> None:
        self._trailers = Headers((_text(k), _text(v)) for k, v in headers)

    def end_received(self) -> None:
        self._ended = True
        if not self._answered and not self.paused and not self._held:
            self._deliver_end()

    def reset_received(self, code: int) -> None:
        if self._gone:
            return
        self._gone = True
        self._held.clear()
        if self.exchange is not None and not self._answered:
            self.exchange.client_gone(f"stream reset ({code})")

    # --- ResponseWriter -------------------------------------------------------------

    def write_head(self, response: HttpResponse) -> None:
        content_type = (response.headers.get("content-type") or "").lower()
        if self.grpc and not content_type.startswith("application/grpc"):
            self._local = (response.status, bytearray())
            return
        head = [(b":status", str(response.status).encode())]
        head += [(k, v) for k, v in _wire(response.headers) if k != b"content-length" or v]
        self.stream.send_headers(head)

    def write_data(self, data: bytes) -> None:
        if self._local is not None:
            body = self._local[1]
            body += data[: max(0, GRPC_MESSAGE_LIMIT - len(body))]
            return
        if self.head_only:
            return  # RFC 9110 §9.3.2: a local answer's body is dropped, not sent as DATA
        self.stream.send_data(data, self._sent)
        if self.stream.queued and not self._response_paused:
            self._response_paused = True
            if self._response_producer is not None:
                self._response_producer.pauseProducing()

    def _sent(self) -> None:
        if self._response_paused and self.stream.queued == 0:
            self._response_paused = False
            if self._response_producer is not None:
                self._response_producer.resumeProducing()

    def write_end(self, trailers: Headers | None = None) -> None:
        self._answered = not self._end_delivered
        if self._local is not None:
            status, body = self._local
            self.stream.send_headers(
                http2_rules.grpc_local_reply(status, body.decode("utf-8", "replace")), end=True
            )
        elif trailers:
            self.stream.send_trailers(_wire(trailers))
        else:
            self.stream.end()
        self._after_answer()

    def _after_answer(self) -> None:
        if not self._answered:
            return
        # Answered before the request was read: drop what is held (giving the window
        # back) and tell a client still sending to stop (RFC 9113 §8.1).
        held, self._held = self._held, []
        self.stream.ack(sum(flow for _, flow in held) + self._owed)
        self._owed = 0
        if not self._ended and self.stream.closed:
            self.stream.reset(ErrorCodes.NO_ERROR)

    def abort(self, reason: str) -> None:
        self._held.clear()
        self.stream.reset(ErrorCodes.INTERNAL_ERROR if "protocol" in reason else ErrorCodes.CANCEL)

    def set_response_producer(self, producer: Producer | None) -> None:
        self._response_producer = producer
        if producer is not None and self._response_paused:
            producer.pauseProducing()
