"""HTTP/1.1 to a service, with h11: one connection and the requests on it.

The pool that holds these connections (per endpoint, with the destination's limits)
is :mod:`gwcore.net.http_pool`.

Rules:

- A connection is opened through the site's dial step (the upstream strategies:
  plain TCP, TLS or mTLS origination with ALPN ``http/1.1``; endpoint choice, connect
  retries and outlier ejection), so those apply per upstream connection. The pool
  only sits on ``UpstreamProtocol.downstream``: what the service sends arrives as
  ``send_to_client``, its end as ``upstream_eof``/``upstream_lost``.
- A connection carries another request only after a complete request *and* a
  complete response h11 says it may keep (HTTP/1.1 keep-alive, no ``Connection:
  close``); then it goes back to its pool (``idle_again``). Anything else closes it.
- A request's body is asked for only once its head is written, and paused while the
  connection's transport cannot take more; the response is read only as fast as the
  client takes it (``pauseProducing`` on the stream pauses the service's socket).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import h11
from twisted.logger import Logger

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.h11_trusted import ValidFields, known_valid, request_event
from gwcore.net.http_wire import ambiguous_framing, text_fields
from gwcore.net.http_wire import latin1_fields as _wire
from gwcore.net.l7_core import UpstreamFailure
from gwcore.net.l7_retry import ReplayBuffer
from gwcore.net.l7_upgrade import switch_upstream
from gwcore.net.write_batch import BATCH, HeldWrites

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gwcore.contract.http_flow import HttpRequest
    from gwcore.net.l7_core import Producer, ResponseSink
    from gwcore.policy.model import Endpoint

log = Logger(namespace="tgw.http")

Dial = Callable[..., "Deferred[tuple[Any, Endpoint, int, float]]"]
"""``dial(owner, factory[, endpoints])``: connect for ``owner`` (the client connection
that asked), trying ``endpoints`` in order when given (the request's choice)."""


class Pool(Protocol):
    """What a connection and its streams ask of their pool (:mod:`gwcore.net.http_pool`)."""

    def idle_again(self, connection: Http1Connection) -> None: ...
    def gone(self, connection: Http1Connection) -> None: ...
    def retry(self, stream: Http1Stream) -> None: ...
    def forget(self, stream: Http1Stream) -> None: ...


class _Alpn:
    """What the TLS strategy reads to offer ALPN (``factory.downstream.alpn``)."""

    alpn = b"http/1.1"


_END = h11.EndOfMessage()
"""The end of a message without trailers (h11's events are immutable: one will do)."""


def alpn_for_http1() -> _Alpn:
    """The object a new connection's factory carries so TLS offers ``http/1.1``."""
    return _Alpn()


class Http1Stream:
    """One request on the pool (an :class:`~gwcore.net.l7_core.UpstreamStream`)."""

    def __init__(self, pool: Pool, request: HttpRequest, sink: ResponseSink, owner: Any):
        self.pool = pool
        self.choice: Any = None  # the pool's endpoint choice for this request
        self.request = request
        self.sink = sink
        self.owner = owner
        self.endpoint: Endpoint | None = None
        self.connection: Http1Connection | None = None
        self.request_producer: Producer | None = None
        self.pending: list[bytes] = []  # body written before a connection (bounded: see send_data)
        self.ended: Headers | bool | None = False
        self.sent_end: Headers | bool = False  # the end went out on the connection
        self.replay = ReplayBuffer(request.method)
        self.done = False
        self.paused = False

    # --- UpstreamStream ------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self.connection is None:
            # The exchange asks for the body only once the head is out; bytes that were
            # already on their way wait here (at most one read of the client).
            self.pending.append(data)
            return
        self.replay.wrote(data)
        self.connection.write(h11.Data(data=data))

    def send_end(self, trailers: Headers | None = None) -> None:
        if self.done:
            return
        if self.connection is None:
            self.ended = trailers if trailers is not None else True
            return
        self.sent_end = trailers if trailers is not None else True
        self.connection.end_request(trailers)

    def set_request_producer(self, producer: Producer | None) -> None:
        self.request_producer = producer
        if producer is not None and self.connection is not None:
            producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        if self.connection is not None:
            self.connection.pause_reading()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.connection is not None:
            self.connection.resume_reading()

    def cancel(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.discard(reason)
        else:
            self.pool.forget(self)

    # --- from the pool and the connection --------------------------------------------

    def attach(self, connection: Http1Connection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint
        if not connection.reused:
            self.replay.retried = True  # only a reused connection's failure is retried
        try:
            self._attach(connection)
        except Exception:
            # Whatever went wrong fails this exchange and frees its connection: a pool
            # slot held by a stream nobody serves would be lost until restart.
            log.failure("starting the upstream request failed")
            if not connection.closed:
                connection.fail("internal_error", "internal error")

    def _attach(self, connection: Http1Connection) -> None:
        connection.start(self)
        if connection.closed:
            return
        pending, self.pending = self.pending, []
        for chunk in pending:
            self.replay.wrote(chunk)
            connection.write(h11.Data(data=chunk))
        if self.ended is not False:
            self.sent_end = self.ended if isinstance(self.ended, Headers) else True
            connection.end_request(self.ended if isinstance(self.ended, Headers) else None)
        elif self.request_producer is not None:
            self.request_producer.resumeProducing()
        # The connection reads as this request's client allows, whatever the previous
        # request on it left (a pause it never lifted would stall this response).
        if self.paused:
            connection.pause_reading()
        else:
            connection.resume_reading()

    def failed(self, failure: UpstreamFailure) -> None:
        if self.done:
            return
        self.done = True
        self.connection = None
        self.sink.response_failed(failure)

    def rewind(self) -> None:
        """Ready to go again on another connection (``l7_retry``): what was sent of the
        body is sent again, and the client's body waits until then."""
        self.connection = None
        self.pending = self.replay.take() + self.pending
        if self.sent_end is not False:
            self.ended, self.sent_end = self.sent_end, False
        if self.request_producer is not None and self.ended is False:
            self.request_producer.pauseProducing()


class Http1Connection:
    """One HTTP/1.1 connection to an endpoint; sits on ``UpstreamProtocol.downstream``."""

    def __init__(self, pool: Pool, upstream: Any, endpoint: Endpoint) -> None:
        self.pool = pool
        self.upstream = upstream
        self.endpoint = endpoint
        self.h11 = h11.Connection(h11.CLIENT)
        self.stream: Http1Stream | None = None
        self.closed = False
        self.chunked = False  # the request in flight is sent with chunked framing
        self.idle_call: Any = None
        self.alpn = _Alpn.alpn
        self.close_cause: str | None = None
        self.reused = False  # it carried an exchange before the current one
        self.read_paused: bool | None = None  # pause_reading() in force (None: unknown)
        # A request's head and the body that came with it go out as one write.
        self.out = HeldWrites(upstream.send)
        upstream.downstream = self
        # The service's socket pauses the client's body while it cannot take more.
        upstream.transport.registerProducer(self, True)

    # --- producer of request bytes (registered on the service's transport) ---------

    def pauseProducing(self) -> None:
        stream = self.stream
        if stream is not None and stream.request_producer is not None:
            stream.request_producer.pauseProducing()

    def resumeProducing(self) -> None:
        stream = self.stream
        if stream is not None and stream.request_producer is not None:
            stream.request_producer.resumeProducing()

    def stopProducing(self) -> None:
        return None

    # --- requests --------------------------------------------------------------------

    def start(self, stream: Http1Stream) -> None:
        self.stream = stream
        request = stream.request
        trusted = known_valid(request.headers)  # gwcore.net.h11_trusted
        try:
            headers = _wire(request.headers)
            names = {k.lower() for k, _ in headers}
            if b"host" not in names and request.authority:
                trusted = False
                # From HTTP/2: :authority is the Host (RFC 9113 §8.3.1), first as in
                # RFC 9112 §3.2.
                headers.insert(0, (b"host", request.authority.encode("latin-1")))
            self.chunked = b"transfer-encoding" in names
            # An HTTP/2 body has no length up front: send it chunked, unless ``body ==
            # b""`` says its stream ended with the head (no body at all, nothing to frame).
            unframed = not names & {b"content-length", b"transfer-encoding"}
            if request.http_version == "HTTP/2" and unframed and request.body != b"":
                headers.append((b"transfer-encoding", b"chunked"))
                self.chunked = True
            event = request_event(
                request.method.encode("latin-1"),
                request.path.encode("latin-1"),
                headers,
                trusted,
            )
        except (h11.LocalProtocolError, UnicodeError) as e:
            self.fail("protocol", f"cannot send the request: {e}")
            return
        self.write(event)

    def write(self, event: Any) -> None:
        if self.closed:
            return
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as e:
            self.fail("protocol", f"cannot send the request: {e}")
            return
        if data:
            self.out.write(data)

    def end_request(self, trailers: Headers | None) -> None:
        chunked = self.stream is not None and self.chunked
        # Only a chunked body carries trailers (h11 refuses them otherwise, for good).
        end = _END
        if trailers is not None and chunked and len(trailers):
            try:
                end = h11.EndOfMessage(headers=_wire(trailers))
            except (h11.LocalProtocolError, UnicodeError) as e:
                self.fail("protocol", f"cannot send the request's trailers: {e}")
                return
        self.write(end)

    def pause_reading(self) -> None:
        if not self.closed:
            self.read_paused = True
            self.upstream.transport.pauseProducing()

    def resume_reading(self) -> None:
        # Only this connection pauses its transport: one it did not pause reads
        # already (None: not known yet, as the connection starts).
        if not self.closed and self.read_paused is not False:
            self.read_paused = False
            self.upstream.transport.resumeProducing()

    # --- what the UpstreamProtocol calls ----------------------------------------------

    def send_to_client(self, data: bytes) -> None:
        if self.closed:
            return
        if data and self.stream is None:
            # Nobody asked: bytes kept for the next caller would be read as its answer
            # (response poisoning across callers). The connection is not reused.
            self.close("the service sent data on an idle connection")
            return
        if data and self.stream is not None:
            self.stream.replay.answered()
        try:
            self.h11.receive_data(data)
        except RuntimeError as e:
            self.fail("protocol", str(e))
            return
        try:
            with BATCH:  # what this read makes the client codec write: one TLS write
                self._drain()
        except Exception:
            log.failure("HTTP response handling failed")
            self.fail("internal_error", "internal error")

    def upstream_eof(self) -> None:
        if self.closed:
            return
        if self.stream is not None and self.h11.their_state is h11.SEND_RESPONSE:
            # Closed before a complete response head (h11 calls this a protocol error):
            # a reset, which on a reused connection may be retried (l7_retry).
            self.fail("reset", "the service closed the connection before its response")
            return
        with contextlib.suppress(RuntimeError):
            self.h11.receive_data(b"")
        self._drain()
        if not self.closed:
            self.fail("reset", "the service closed the connection")

    def upstream_lost(self) -> None:
        if not self.closed:
            self.fail("reset", "the connection to the service was lost")

    def upstream_tls_failed(self, reason: str, detail: str) -> None:
        self.close_cause = f"upstream_{reason}"
        self.fail("reset", f"TLS with the service failed: {reason}: {detail}")

    def _drain(self) -> None:
        while not self.closed:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self.fail("protocol", f"bad HTTP from the service: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            stream = self.stream
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and stream is not None:
                    switch_upstream(self, stream, event)  # an upgrade: a tunnel now
                    return
                continue  # 100 Continue and friends are answered hop by hop
            if stream is None:
                if isinstance(event, h11.ConnectionClosed):
                    self.close("idle connection closed by the service")
                else:
                    self.fail("protocol", "the service sent a response nobody asked for")
                return
            if isinstance(event, h11.Response):
                raw = event.headers.raw_items()
                if ambiguous_framing(raw):
                    self.fail(
                        "protocol",
                        "the service's response has Content-Length and Transfer-Encoding",
                    )
                    return
                headers = ValidFields.adopt(text_fields(raw))  # h11 checked them
                version = "HTTP/1.1" if event.http_version == b"1.1" else "HTTP/1.0"
                stream.sink.response_head(
                    HttpResponse(event.status_code, headers, None, None, version)
                )
            elif isinstance(event, h11.Data):
                stream.sink.response_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                raw = event.headers.raw_items()
                self._maybe_reuse(response_complete=True)
                stream.done = True
                stream.sink.response_end(Headers(text_fields(raw)) if raw else None)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.fail("reset", "the service closed the connection")
                return

    def _maybe_reuse(self, response_complete: bool = False) -> None:
        """After a complete response: idle again if both messages are complete and the
        service keeps the connection; otherwise close it. A response that ended before
        the request did (the service answered early) also closes it: the rest of the
        request body has nowhere to go."""
        if not response_complete:
            return
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connection = None
        if (
            self.h11.our_state is h11.DONE
            and self.h11.their_state is h11.DONE
            # Bytes after a complete response (a HEAD or 304 answered with a body, a
            # second response) would be the next caller's answer: never reuse then.
            and not self.h11.trailing_data[0]
        ):
            self.h11.start_next_cycle()
            self.reused = True
            # The client may have paused this response's reading just before its end:
            # idle (or the next request's), the connection reads again.
            self.resume_reading()
            self.pool.idle_again(self)
        else:
            self.close("not reusable after this exchange")

    # --- ending -------------------------------------------------------------------

    def fail(self, reason: str, detail: str) -> None:
        stream, self.stream = self.stream, None
        if (
            stream is not None
            and reason == "reset"
            and self.reused
            and not stream.done
            and stream.replay.may_retry()
        ):
            # A stale kept-alive connection (l7_retry): once more on a fresh one. Queued
            # first, so closing this connection dials for it.
            log.info(
                "retrying {method} on a fresh connection to {endpoint}: {detail}",
                method=stream.request.method,
                endpoint=self.endpoint,
                detail=detail,
            )
            stream.rewind()
            self.pool.retry(stream)
            self.close(detail)
            return
        self.close(detail)
        if stream is not None:
            stream.failed(UpstreamFailure(reason, detail, 502, self.endpoint))

    def discard(self, reason: str) -> None:
        """Its stream was cancelled mid-exchange: the connection cannot be reused."""
        self.stream = None
        self.close(reason)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        self.idle_call = None
        upstream = self.upstream
        upstream.downstream = None
        if not upstream.lost:
            self.out.flush()
            if getattr(upstream.transport, "producer", None) is not None:
                upstream.transport.unregisterProducer()
            upstream.transport.resumeProducing()
            upstream.transport.loseConnection()
        self.pool.gone(self)
