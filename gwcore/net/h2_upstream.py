"""HTTP/2 to a service (``http2``/``grpc`` destinations): multiplexed, bounded connections.

An :class:`Http2Pool` is the destination's :class:`~gwcore.net.l7_core.UpstreamClient`.
Rules:

- Connections are opened through the site's dial step (plain TCP with prior
  knowledge, or the TLS/mTLS origination offering ALPN ``h2``; endpoint choice,
  connect retries and outlier ejection apply per upstream connection). An
  :class:`Http2Connection` sits on ``UpstreamProtocol.downstream`` like the HTTP/1.1
  pool's, and takes streams only once the service's first SETTINGS arrived.
- A connection carries at most the service's ``SETTINGS_MAX_CONCURRENT_STREAMS``
  streams at once; the pool opens at most ``max_connections`` connections; a request
  finding no room waits in a queue of at most ``max_pending``, else fails at once
  with 503 (``overflow``).
- Flow control (:mod:`gwcore.net.h2_link`): request DATA goes out as the service's
  windows allow, and while some waits the request producer is paused; response DATA
  is acknowledged to the service only while the exchange's client keeps taking it
  (``pauseProducing`` on the stream holds the acknowledgements).
- A connection without streams for the pool's ``idle_timeout`` closes.
- A GOAWAY or a lost connection takes no new streams; its open streams fail
  (``reset``, 502 before a response head). ``h2`` allows nothing after a GOAWAY, so
  streams the service had accepted end too; the next requests use a new connection.
- gRPC requests keep ``te: trailers`` (hop-by-hop in HTTP/1.1, but the one TE value
  HTTP/2 allows and gRPC servers require).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.h2_link import H2Link, H2Stream, HeaderList, unsendable_field
from gwcore.net.l7_core import UpstreamFailure
from gwcore.net.splice import UpstreamFactory
from gwcore.net.write_batch import BATCH

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gwcore.contract.http_flow import HttpRequest
    from gwcore.net.l7_core import Producer, ResponseSink
    from gwcore.policy.model import Endpoint

SETTINGS_TIMEOUT = 5.0
"""Seconds a new connection may take to send its first SETTINGS (an HTTP/1.1-only or
silent service never does); then it is closed and a waiting request fails with 502."""

Dial = Callable[[Any, Any], "Deferred[tuple[Any, Endpoint, int, float]]"]
"""``dial(owner, factory)``: connect for ``owner`` (the client connection that asked)."""


class _Alpn:
    """What the TLS strategy reads to offer ALPN (``factory.downstream.alpn``)."""

    alpn = b"h2"


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def request_head(request: HttpRequest) -> HeaderList:
    """The HTTP/2 head of a framing-neutral request (pseudo-headers first)."""
    head: HeaderList = [
        (b":method", request.method.encode("latin-1")),
        (b":scheme", (request.scheme or "https").encode("latin-1")),
        (b":authority", request.authority.encode("latin-1")),
        (b":path", request.path.encode("latin-1")),
    ]
    grpc = False
    for name, value in request.headers:
        lower = name.lower()
        if lower in ("host", "connection", "keep-alive", "transfer-encoding", "upgrade", "te"):
            continue  # HTTP/2 carries none of these (RFC 9113 §8.2.2); host is :authority
        if lower == "content-type" and value.lower().startswith("application/grpc"):
            grpc = True
        head.append((lower.encode("latin-1"), value.encode("latin-1")))
    if grpc:
        head.append((b"te", b"trailers"))
    return head


class Http2Stream:
    """One request on the pool (an :class:`~gwcore.net.l7_core.UpstreamStream`)."""

    def __init__(self, pool: Http2Pool, request: HttpRequest, sink: ResponseSink, owner: Any):
        self.pool = pool
        self.request = request
        self.sink = sink
        self.owner = owner
        self.endpoint: Endpoint | None = None
        self.connection: Http2Connection | None = None
        self.h2: H2Stream | None = None
        self.request_producer: Producer | None = None
        self.pending: list[bytes] = []  # body written before a stream (at most one read)
        self.ended: Headers | bool | None = False
        self.done = False
        self.paused = False
        self._owed: list[int] = []
        self._request_paused = False
        self._head_seen = False

    # --- UpstreamStream ----------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self.h2 is None:
            self.pending.append(data)
            return
        self.h2.send_data(data, self._sent)
        if self.h2.queued and not self._request_paused:
            self._request_paused = True
            if self.request_producer is not None:
                self.request_producer.pauseProducing()

    def _sent(self) -> None:
        if self._request_paused and self.h2 is not None and self.h2.queued == 0:
            self._request_paused = False
            if self.request_producer is not None and not self.done:
                self.request_producer.resumeProducing()

    def send_end(self, trailers: Headers | None = None) -> None:
        if self.done:
            return
        if self.h2 is None:
            self.ended = trailers if trailers is not None else True
            return
        if trailers:
            self.h2.send_trailers([(k.lower().encode(), v.encode("latin-1")) for k, v in trailers])
        else:
            self.h2.end()

    def set_request_producer(self, producer: Producer | None) -> None:
        self.request_producer = producer
        if producer is not None and self.h2 is not None and not self._request_paused:
            producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        owed, self._owed = self._owed, []
        if self.h2 is not None and owed:
            self.h2.ack(sum(owed))

    def cancel(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        if self.h2 is not None:
            self.h2.reset(ErrorCodes.CANCEL)
        else:
            self.pool.forget(self)

    # --- from the pool ----------------------------------------------------------------

    def attach(self, connection: Http2Connection) -> None:
        self.connection = connection
        self.endpoint = connection.endpoint
        end = self.ended is True and not self.pending
        try:
            self.h2 = connection.open_stream(request_head(self.request), self, end)
        except (h2.exceptions.ProtocolError, ValueError) as e:
            self.failed(UpstreamFailure("protocol", f"cannot send the request: {e}", 502))
            return
        pending, self.pending = self.pending, []
        for chunk in pending:
            self.send_data(chunk)
        if self.ended is not False and not end:
            self.send_end(self.ended if isinstance(self.ended, Headers) else None)
        elif self.request_producer is not None and not self._request_paused:
            self.request_producer.resumeProducing()

    def failed(self, failure: UpstreamFailure) -> None:
        if self.done:
            return
        self.done = True
        self.sink.response_failed(failure)

    # --- StreamPeer (the service's side of the stream) ----------------------------------

    def headers_received(self, headers: HeaderList) -> None:
        if self.done:
            return
        status = 0
        fields = Headers()
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.add(_text(name), _text(value))
        self._head_seen = True
        self.sink.response_head(HttpResponse(status, fields, http_version="HTTP/2"))

    def data_received(self, data: bytes, flow_length: int) -> None:
        if self.done:
            return
        self.sink.response_data(data)
        if self.paused:
            self._owed.append(flow_length)
        elif self.h2 is not None:
            self.h2.ack(flow_length)

    def trailers_received(self, headers: HeaderList) -> None:
        self._trailers = Headers((_text(k), _text(v)) for k, v in headers)

    _trailers: Headers | None = None

    def end_received(self) -> None:
        if self.done:
            return
        self.done = True
        self.sink.response_end(self._trailers)

    def reset_received(self, code: int) -> None:
        if self.done:
            return
        refused = code == ErrorCodes.REFUSED_STREAM
        self.failed(
            UpstreamFailure(
                "reset",
                f"the service {'refused' if refused else 'reset'} the stream ({code!s})",
                503 if refused else 502,
                self.endpoint,
            )
        )


class Http2Connection(H2Link):
    """One HTTP/2 connection to an endpoint; sits on ``UpstreamProtocol.downstream``."""

    client_side = True

    def __init__(self, pool: Http2Pool, upstream: Any, endpoint: Endpoint) -> None:
        super().__init__(on_protocol_error=pool.protocol_error)
        self.pool = pool
        self.upstream = upstream
        self.endpoint = endpoint
        self.alpn = _Alpn.alpn
        self.settled = False
        self.close_cause: str | None = None
        upstream.downstream = self
        # The service's socket tells us when it cannot take more (set_writable).
        upstream.transport.registerProducer(self, True)
        self._settle_timer: Any = pool.reactor.callLater(
            SETTINGS_TIMEOUT, self.close_out, "no HTTP/2 SETTINGS from the service"
        )
        self.start()

    retired = False
    """Its endpoint left the destination: no new streams, closed once idle."""

    def capacity(self) -> int:
        if self.closed or not self.settled or self.retired:
            return 0
        limit = self.conn.remote_settings.max_concurrent_streams
        return max(0, limit - self.conn.open_outbound_streams)

    _idle_timer: Any = None

    def _idle_again(self) -> None:
        """No stream left: close after the pool's ``idle_timeout`` unless one opens."""
        if self.closed or self.streams or self._idle_timer is not None:
            return
        seconds = getattr(self.pool.limits, "idle_timeout", 60.0)
        self._idle_timer = self.pool.reactor.callLater(seconds, self.close_out, "idle_timeout")

    def _busy_again(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def open_stream(self, head: HeaderList, peer: Http2Stream, end: bool) -> H2Stream:
        problem = unsendable_field(head)
        if problem is not None:  # an addon's value: the service would drop the connection
            raise h2.exceptions.ProtocolError(problem)
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, head, end_stream=end)
        self._busy_again()
        stream = H2Stream(self, stream_id)
        stream.peer = peer
        stream.closed = end
        self.streams[stream_id] = stream
        self.flush()
        return stream

    # --- producer registered on the service's transport ---------------------------------

    def pauseProducing(self) -> None:
        self.set_writable(False)

    def resumeProducing(self) -> None:
        self.set_writable(True)

    def stopProducing(self) -> None:
        self.paused = True

    # --- H2Link -----------------------------------------------------------------------

    def write_out(self, data: bytes) -> None:
        if not self.upstream.lost:
            self.upstream.send(data)

    def close_out(self, cause: str) -> None:
        self._cancel_settle_timer()
        self._busy_again()
        self.closed = True
        self.close_cause = self.close_cause or cause
        self.upstream.transport.loseConnection()
        self.pool.gone(self)

    def other_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            peer = self._peer(event.stream_id)
            if peer is not None:
                peer.headers_received(list(event.headers or ()))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.settled:
                self.settled = True
                self._cancel_settle_timer()
            self.pool.has_room(self)
            self._idle_again()

    def _cancel_settle_timer(self) -> None:
        timer, self._settle_timer = self._settle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def stream_closed(self) -> None:
        if self.retired and not self.streams and not self.closed:
            self.close_out("endpoint removed")
            return
        self.pool.has_room(self)
        self._idle_again()

    # --- what the UpstreamProtocol calls ---------------------------------------------

    def send_to_client(self, data: bytes) -> None:
        with BATCH:  # what this read makes an HTTP/1.1 client's codec write: one write
            self.receive(data)

    def upstream_eof(self) -> None:
        self.upstream_lost()

    def upstream_lost(self) -> None:
        self._cancel_settle_timer()
        self._busy_again()
        if self.closed and not self.streams:
            self.pool.gone(self)
            return
        self.lost()
        self.pool.gone(self)

    def upstream_tls_failed(self, reason: str, detail: str) -> None:
        self.close_cause = f"upstream_{reason}"
        self.upstream_lost()


class Http2Pool:
    """The HTTP/2 connections to one destination (an ``UpstreamClient``)."""

    def __init__(
        self,
        reactor: Any,
        dial: Dial,
        limits: Any,
        released: Callable[[Endpoint], None] = lambda endpoint: None,
    ) -> None:
        self.reactor = reactor
        self.dial = dial
        self.limits = limits
        self.released = released
        self.connections: list[Http2Connection] = []
        self.connecting = 0
        self.waiting: deque[Http2Stream] = deque()
        self.closed = False
        self.protocol_errors: list[str] = []

    @property
    def max_connections(self) -> int:
        # HTTP/2 multiplexes: a few connections carry what HTTP/1.1 needs many for.
        return max(1, min(getattr(self.limits, "max_connections", 4), 4))

    def open(self, request: HttpRequest, sink: ResponseSink, owner: Any = None) -> Http2Stream:
        stream = Http2Stream(self, request, sink, owner)
        if self.closed:
            self._fail_later(stream, UpstreamFailure("unavailable", "the site is stopping", 503))
            return stream
        connection = self._with_room()
        if connection is not None:
            stream.attach(connection)
            return stream
        max_pending = getattr(self.limits, "max_pending", 256)
        if len(self.waiting) >= max_pending:
            self._fail_later(
                stream,
                UpstreamFailure(
                    "overflow",
                    f"{len(self.connections)} HTTP/2 connections full and "
                    f"{max_pending} requests waiting",
                    503,
                ),
            )
            return stream
        self.waiting.append(stream)
        self._grow(owner)
        return stream

    def _fail_later(self, stream: Http2Stream, failure: UpstreamFailure) -> None:
        # Never call the sink from inside open(): the exchange has no stream yet.
        self.reactor.callLater(0, stream.failed, failure)

    def _with_room(self) -> Http2Connection | None:
        for connection in self.connections:
            if connection.capacity() > 0:
                return connection
        return None

    def _grow(self, owner: Any) -> None:
        if self.closed or len(self.connections) + self.connecting >= self.max_connections:
            return
        if self.connecting or any(not c.settled and not c.closed for c in self.connections):
            return  # one is starting: its SETTINGS say how much room it has
        self.connecting += 1
        d = self.dial(owner, UpstreamFactory(_Alpn()))
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, result: tuple[Any, Endpoint, int, float]) -> None:
        self.connecting -= 1
        upstream, endpoint, _, _ = result
        connection = Http2Connection(self, upstream, endpoint)
        if self.closed:
            connection.close_out("the site is stopping")
            return
        self.connections.append(connection)

    def _connect_failed(self, failure: Any) -> None:
        self.connecting -= 1
        error = failure.value
        endpoint = getattr(error, "endpoint", None)
        # One dial serves the first waiting request; the next ones try their own.
        if self.waiting:
            self.waiting.popleft().failed(UpstreamFailure("unavailable", str(error), 502, endpoint))
        if self.waiting:
            self._grow(self.waiting[0].owner)

    def has_room(self, connection: Http2Connection) -> None:
        """A connection settled or a stream on it ended: start waiting requests."""
        while self.waiting:
            room = self._with_room()
            if room is None:
                self._grow(self.waiting[0].owner)
                return
            stream = self.waiting.popleft()
            if not stream.done:
                stream.attach(room)

    def gone(self, connection: Http2Connection) -> None:
        """``connection`` closed (its picker count is released)."""
        if connection not in self.connections:
            return
        self.connections.remove(connection)
        self.released(connection.endpoint)
        if not connection.settled and self.waiting:
            # It never spoke HTTP/2 (an HTTP/1.1-only or silent service): like a failed
            # connect, the first waiting request hears why; the next ones try their own.
            self.waiting.popleft().failed(
                UpstreamFailure(
                    "protocol",
                    f"the service did not speak HTTP/2 ({connection.close_cause or 'closed'})",
                    502,
                    connection.endpoint,
                )
            )
        if self.waiting and not self.closed:
            self.has_room(connection)

    def retain(self, endpoints: set[Endpoint]) -> None:
        """The destination's endpoints now: connections to others take no new streams
        and close once their streams are done (at once when idle)."""
        for connection in list(self.connections):
            if connection.endpoint not in endpoints:
                connection.retired = True
                if not connection.streams:
                    connection.close_out("endpoint removed")

    def forget(self, stream: Http2Stream) -> None:
        """A waiting request was cancelled."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(stream)

    def protocol_error(self, reason: str, detail: str) -> None:
        self.protocol_errors.append(reason)
        H2Link.log.info(
            "HTTP/2 protocol error of the service ({reason}): {detail}",
            reason=reason,
            detail=detail,
        )

    def close(self) -> None:
        self.closed = True
        for connection in list(self.connections):
            if not connection.streams:
                connection.close_out("the site is stopping")
        waiting, self.waiting = self.waiting, deque()
        for stream in waiting:
            stream.failed(UpstreamFailure("unavailable", "the site is stopping", 503))
