"""The HTTP/2 client towards a service: multiplexed connections, bounded in number.

:class:`H2Upstream` is one client connection (prior knowledge over TCP, or over the
existing TLS/mTLS origination with ALPN ``h2``); it opens a stream only while the
service's ``SETTINGS_MAX_CONCURRENT_STREAMS`` allows one more, and is usable only
after the service's first SETTINGS frame arrived.

:class:`H2Pool` holds at most ``max_connections`` of them for one destination and
hands out streams: on a connection with room, else on a new connection (the
``connect`` callable is the core's: endpoint choice, connect retries and outlier
ejection happen there, per upstream connection), else it queues the request, at
most ``max_waiting`` of them. A connection that got GOAWAY or closed takes no new
streams; its open streams are reset to their peers (``h2`` cannot keep a connection
after GOAWAY, so streams it had accepted end too; gRPC clients see UNAVAILABLE).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, fail, succeed

from gwcore.net.h2_link import H2Link, H2Stream, HeaderList, StreamPeer


class PoolExhaustedError(Exception):
    """More requests wait for an upstream stream than the pool admits."""


class H2Upstream(H2Link):
    """One HTTP/2 client connection to a service endpoint."""

    client_side = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settled: Deferred[H2Upstream] = Deferred()
        self.on_change: Callable[[H2Upstream], None] | None = None
        self.endpoint: Any = None  # what the core connected to (access log)

    @property
    def usable(self) -> bool:
        return not self.closed and self.settled.called

    def capacity(self) -> int:
        if not self.usable:
            return 0
        limit = self.conn.remote_settings.max_concurrent_streams
        return max(0, limit - self.conn.open_outbound_streams)

    def open_stream(self, headers: HeaderList, peer: StreamPeer, end: bool = False) -> H2Stream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = H2Stream(self, stream_id)
        stream.peer = peer
        self.streams[stream_id] = stream
        self.conn.send_headers(stream_id, headers, end_stream=end)
        if end:
            stream.closed = True
        self.flush()
        return stream

    def other_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.peer is not None:
                stream.peer.headers_received(list(event.headers or ()))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.settled.called:
                self.settled.callback(self)
            self._changed()

    def terminated(self, event: h2.events.ConnectionTerminated) -> None:
        self.log.info(
            "upstream HTTP/2 GOAWAY ({code}, last stream {last})",
            code=event.error_code,
            last=event.last_stream_id,
        )
        super().terminated(event)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.closed = True
            if stream.peer is not None:
                refused = event.last_stream_id is not None and stream.id > event.last_stream_id
                stream.peer.reset_received(
                    ErrorCodes.REFUSED_STREAM if refused else ErrorCodes.CANCEL
                )
        self._changed()

    def pump(self, stream: H2Stream) -> None:
        super().pump(stream)
        if stream.id not in self.streams:
            self._changed()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        super().reset_stream(stream, code)
        self._changed()

    def handle(self, event: h2.events.Event) -> None:
        super().handle(event)
        if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self._changed()

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        if not self.settled.called:
            self.settled.errback(ConnectionError("upstream closed before its SETTINGS"))
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


class H2Pool:
    """Streams on at most ``max_connections`` HTTP/2 connections (module docstring)."""

    def __init__(
        self,
        connect: Callable[[], Deferred[H2Upstream]],
        *,
        max_connections: int = 2,
        max_waiting: int = 1024,
    ) -> None:
        self._connect = connect
        self.max_connections = max_connections
        self.max_waiting = max_waiting
        self.connections: list[H2Upstream] = []
        self._connecting = 0
        self._waiting: deque[tuple[HeaderList, StreamPeer, bool, Deferred[H2Stream]]] = deque()

    def open_stream(
        self, headers: HeaderList, peer: StreamPeer, end: bool = False
    ) -> Deferred[H2Stream]:
        """A stream to the service carrying this request head, when one is free."""
        conn = self._with_room()
        if conn is not None:
            try:
                return succeed(conn.open_stream(headers, peer, end))
            except h2.exceptions.ProtocolError as error:
                return fail(error)
        if len(self._waiting) >= self.max_waiting:
            return fail(PoolExhaustedError(f"{len(self._waiting)} requests wait for a stream"))
        d: Deferred[H2Stream] = Deferred()
        self._waiting.append((headers, peer, end, d))
        self._grow()
        return d

    def cancel(self, peer: StreamPeer) -> None:
        """Forget a queued request whose client went away."""
        for item in list(self._waiting):
            if item[1] is peer:
                self._waiting.remove(item)

    def _with_room(self) -> H2Upstream | None:
        for conn in self.connections:
            if conn.capacity() > 0:
                return conn
        return None

    def _grow(self) -> None:
        if len(self.connections) + self._connecting >= self.max_connections:
            return
        self._connecting += 1
        d = self._connect()
        d.addCallback(lambda conn: conn.settled)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, conn: H2Upstream) -> None:
        self._connecting -= 1
        conn.on_change = self._changed
        self.connections.append(conn)
        self._serve()

    def _failed(self, failure: Any) -> None:
        self._connecting -= 1
        # Nothing to wait for any more: those waiting hear why (the core answers 503).
        if not self.connections and not self._connecting:
            waiting, self._waiting = self._waiting, deque()
            for _, _, _, d in waiting:
                d.errback(failure)
        elif self._waiting:
            self._grow()

    def _changed(self, conn: H2Upstream) -> None:
        if conn.closed and conn in self.connections:
            self.connections.remove(conn)
        self._serve()

    def _serve(self) -> None:
        while self._waiting:
            conn = self._with_room()
            if conn is None:
                self._grow()
                return
            headers, peer, end, d = self._waiting.popleft()
            try:
                stream = conn.open_stream(headers, peer, end)
            except h2.exceptions.ProtocolError as error:
                d.errback(error)
            else:
                d.callback(stream)

    def close(self) -> None:
        for conn in list(self.connections):
            conn.transport.loseConnection()
