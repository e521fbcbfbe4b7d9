"""One HTTP/2 connection driven by the sans-IO ``h2`` library: the part both sides share.

An :class:`H2Link` drives one :class:`h2.connection.H2Connection`.
The downstream (server) and upstream (client) drivers subclass it; each stream is an
:class:`H2Stream` whose events go to a :class:`StreamPeer` (the relay or the exchange).

Flow control is the whole point of this module, and its rules are:

- Received DATA is acknowledged (``acknowledge_received_data``, which is what lets
  the peer send more) only by :meth:`H2Stream.ack`, which the relay calls when the
  *other* side took the bytes. A slow reader therefore stalls its writer through the
  HTTP/2 windows, not through our buffers.
- Data to send waits in its stream's queue until the stream and connection windows
  admit it; each queued chunk may carry an ``on_sent`` callback, called once the
  whole chunk went to the transport (the relay acknowledges the other side there).
  What is queued is bounded by what the other side may send unacknowledged: its
  window, which is ours to set (:data:`STREAM_WINDOW`, :data:`CONNECTION_WINDOW`).
- While the transport cannot take more (:meth:`H2Link.set_writable`), no DATA is
  written, so nothing is acknowledged to the other side either.

A protocol error of the peer (bad framing, an oversized header list, a flow-control
violation) ends the connection with GOAWAY, one log line and a counted reason; it
never raises into the reactor.
"""

from __future__ import annotations

import abc
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.logger import Logger

HeaderList = list[tuple[bytes, bytes]]

STREAM_WINDOW = 256 * 1024
"""Per-stream receive window we advertise: bytes a peer may send before we ack."""
CONNECTION_WINDOW = 1024 * 1024
"""Connection receive window: bounds the unacknowledged bytes of all streams together."""
MAX_CONCURRENT_STREAMS = 100
"""Streams a peer may open on one downstream connection (Envoy's default is 2^31-1;
nginx and HAProxy use 128 and 100)."""


class StreamPeer(Protocol):
    """What receives the events of one stream (the relay, or the exchange)."""

    def headers_received(self, headers: HeaderList) -> None: ...

    def data_received(self, data: bytes, flow_length: int) -> None: ...

    def trailers_received(self, headers: HeaderList) -> None: ...

    def end_received(self) -> None: ...

    def reset_received(self, code: int) -> None: ...


def protocol_error_reason(error: Exception) -> str:
    """A bounded label for a peer's HTTP/2 protocol error (metrics, access log)."""
    if isinstance(error, h2.exceptions.DenialOfServiceError):
        return "header_list_too_large" if "header" in str(error).lower() else "abuse"
    if isinstance(error, h2.exceptions.FlowControlError):
        return "flow_control"
    if isinstance(error, h2.exceptions.FrameTooLargeError):
        return "frame_too_large"
    if isinstance(error, h2.exceptions.TooManyStreamsError):
        return "too_many_streams"
    return "protocol_error"


def unsendable_field(fields: list[tuple[bytes, bytes]]) -> str | None:
    """Why a header block cannot go out in HTTP/2 (RFC 9113 §8.2.1), or None."""
    for name, value in fields:
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return f"field {name!r} has a CR, LF or NUL in its value"
    return None


def error_code_for(reason: str) -> ErrorCodes:
    return {
        "flow_control": ErrorCodes.FLOW_CONTROL_ERROR,
        "frame_too_large": ErrorCodes.FRAME_SIZE_ERROR,
        "abuse": ErrorCodes.ENHANCE_YOUR_CALM,
    }.get(reason, ErrorCodes.PROTOCOL_ERROR)


class H2Stream:
    """One stream of an :class:`H2Link`: its send queue and the peer of its events."""

    __slots__ = (
        "_end",
        "_out",
        "_trailers",
        "closed",
        "id",
        "link",
        "peer",
        "queued",
        "remote_done",
    )

    def __init__(self, link: H2Link, stream_id: int) -> None:
        self.link = link
        self.id = stream_id
        self.peer: StreamPeer | None = None
        self._out: deque[tuple[bytes, Callable[[], None] | None]] = deque()
        self.queued = 0
        self._trailers: HeaderList | None = None
        self._end = False
        self.closed = False  # we sent END_STREAM (or a reset): nothing more to send
        self.remote_done = False  # the peer sent END_STREAM: nothing more to receive

    def send_headers(self, headers: Iterable[tuple[bytes, bytes]], end: bool = False) -> None:
        if self.closed:
            return
        fields = list(headers)
        try:
            # h2 checks names on the way out but not every value: a CR, LF or NUL (an
            # addon's header, say) would make the peer drop the whole connection.
            problem = unsendable_field(fields)
            if problem is not None:
                raise h2.exceptions.ProtocolError(problem)
            self.link.conn.send_headers(self.id, fields, end_stream=end)
        except h2.exceptions.ProtocolError as error:
            # The stream cannot be answered: reset it (a counted line, not a traceback).
            self.link.log.info("HTTP/2 head not sendable: {error}", error=str(error))
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            self.closed = True
        self.link.flush()

    def send_data(self, data: bytes, on_sent: Callable[[], None] | None = None) -> None:
        """Queue ``data``; ``on_sent`` runs once all of it went out (never if reset)."""
        if self.closed or self._end:
            return
        if not data:
            if on_sent is not None:
                on_sent()
            return
        self._out.append((data, on_sent))
        self.queued += len(data)
        self.link.pump(self)

    def send_trailers(self, headers: HeaderList) -> None:
        """End the stream with trailers, after every queued byte."""
        if self.closed or self._end:
            return
        self._trailers = headers
        self._end = True
        self.link.pump(self)

    def end(self) -> None:
        """End the stream (an empty DATA with END_STREAM), after every queued byte."""
        if self.closed or self._end:
            return
        self._end = True
        self.link.pump(self)

    def reset(self, code: int = ErrorCodes.CANCEL) -> None:
        # Also after our END_STREAM: the peer's half may still be open (a response).
        if self.link.streams.get(self.id) is not self:
            return
        self.closed = True
        self._out.clear()
        self.queued = 0
        self.link.reset_stream(self, code)

    def ack(self, flow_length: int) -> None:
        """The other side took ``flow_length`` received bytes: let the peer send more."""
        self.link.acknowledge(self.id, flow_length)

    def pump(self, conn: h2.connection.H2Connection, max_frame: int) -> None:
        """Send what the windows admit; returns with the rest still queued."""
        out = self._out
        while out and not self.link.paused:
            window = conn.local_flow_control_window(self.id)
            if window <= 0:
                return
            chunk, on_sent = out[0]
            n = min(window, max_frame, len(chunk))
            conn.send_data(self.id, chunk[:n])
            self.link.data_frames_sent += 1
            self.queued -= n
            if n == len(chunk):
                out.popleft()
                self.link.flush()
                if on_sent is not None:
                    on_sent()
                if self.closed:  # on_sent may reset us
                    return
            else:
                out[0] = (chunk[n:], on_sent)
                self.link.flush()
        if not out and self._end and not self.closed and not self.link.paused:
            self.closed = True
            if self._trailers is not None:
                conn.send_headers(self.id, self._trailers, end_stream=True)
            else:
                conn.end_stream(self.id)
            self.link.flush()


class H2Link(abc.ABC):
    """The shared HTTP/2 connection driver (module docstring).

    Not a Twisted protocol: the downstream codec sits on the L7 session's
    ``ClientLink`` and the upstream connection on an ``UpstreamProtocol``, so a
    subclass says how bytes leave (:meth:`write_out`) and how the connection ends
    (:meth:`close_out`); bytes come in through :meth:`receive`.
    """

    log = Logger(namespace="tgw.http")
    client_side = False

    def __init__(
        self,
        *,
        max_header_list_size: int = 64 * 1024,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        on_protocol_error: Callable[[str, str], None] | None = None,
    ) -> None:
        config = h2.config.H2Configuration(
            client_side=self.client_side, header_encoding=None, validate_inbound_headers=True
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=self.client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Until our SETTINGS are acknowledged hpack uses its own default: use ours now.
        self.conn.decoder.max_header_list_size = max_header_list_size
        self.streams: dict[int, H2Stream] = {}
        self.paused = False
        self.closed = False
        self.close_reason: str | None = None
        self.reset_in_batch: set[int] = set()
        self.data_frames_sent = 0  # what a peer's WINDOW_UPDATEs are measured against
        self._on_protocol_error = on_protocol_error

    # --- what a subclass provides --------------------------------------------------

    @abc.abstractmethod
    def write_out(self, data: bytes) -> None:
        """Send ``data`` (frames h2 wrote) to the peer."""

    @abc.abstractmethod
    def close_out(self, cause: str) -> None:
        """Close the transport to the peer, ``cause`` being the record's close cause."""

    # --- the connection's life -----------------------------------------------------

    def start(self) -> None:
        """Send our preface/SETTINGS and open the connection window."""
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def receive(self, data: bytes) -> bool:
        """Feed ``data`` to ``h2``; True: it completed at least one frame h2 reported."""
        if self.closed:
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self.protocol_error(protocol_error_reason(error), str(error))
            return False
        # Streams this read also resets: a server need not start work for them.
        self.reset_in_batch = {e.stream_id for e in events if isinstance(e, h2.events.StreamReset)}
        for event in events:
            self.handle(event)
            if self.closed:
                return False
        self.flush()
        return bool(events)

    def lost(self) -> None:
        """The transport is gone: every stream still open hears a reset."""
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.closed = True
            if stream.peer is not None:
                stream.peer.reset_received(ErrorCodes.CANCEL)

    def set_writable(self, writable: bool) -> None:
        """The transport's buffer is full (False) or drained (True)."""
        self.paused = not writable
        if writable:
            self.pump_all()

    def pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if self.paused or self.closed:
                return
            self.pump(stream)

    # --- events -------------------------------------------------------------------

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.peer is None:
                # Nobody will read it (a stream we reset): give the window back.
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                stream.peer.data_received(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            peer = self._peer(event.stream_id)
            if peer is not None:
                peer.trailers_received(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.peer is not None:
                stream.peer.end_received()
            self._maybe_forget(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.closed = True
                if stream.peer is not None:
                    stream.peer.reset_received(event.error_code)
            self.stream_closed()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.pump(stream)
            elif not self.paused:
                self.pump_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated(event)
        else:
            self.other_event(event)

    def _peer(self, stream_id: int) -> StreamPeer | None:
        stream = self.streams.get(stream_id)
        return stream.peer if stream is not None else None

    def _maybe_forget(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.remote_done = True
            if stream.closed:
                del self.streams[stream_id]
                self.stream_closed()

    def stream_closed(self) -> None:
        """A stream ended both ways or was reset (the upstream pool has room again)."""
        return None  # optional: only the upstream pool listens

    def other_event(self, event: h2.events.Event) -> None:
        """Subclasses: request/response heads, settings changes."""
        return None  # optional: events a side does not handle are ignored

    def terminated(self, event: h2.events.ConnectionTerminated) -> None:
        """GOAWAY from the peer. ``h2`` allows nothing after it, so every stream still
        open hears a reset: REFUSED_STREAM above ``last_stream_id`` (never processed,
        safe to retry), CANCEL at or below it."""
        self.log.info(
            "HTTP/2 GOAWAY from the {side} ({code}, last stream {last})",
            side="service" if self.client_side else "client",
            code=event.error_code,
            last=event.last_stream_id,
        )
        self.closed = True
        self.close_reason = "goaway"
        self.flush()
        streams, self.streams = self.streams, {}
        last = event.last_stream_id
        for stream in streams.values():
            stream.closed = True
            if stream.peer is not None:
                refused = last is not None and stream.id > last
                stream.peer.reset_received(
                    ErrorCodes.REFUSED_STREAM if refused else ErrorCodes.CANCEL
                )
        self.close_out("goaway")

    # --- sending ------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.write_out(data)

    def pump(self, stream: H2Stream) -> None:
        if self.closed:
            return
        try:
            stream.pump(self.conn, self.conn.max_outbound_frame_size)
        except h2.exceptions.StreamClosedError:
            stream.closed = True
        if stream.closed and not stream._out:
            self._forget_if_done(stream)

    def _forget_if_done(self, stream: H2Stream) -> None:
        # Both halves done: the stream is over (a peer still sending keeps it).
        if stream.remote_done and self.streams.pop(stream.id, None):
            self.stream_closed()

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        if self.closed or flow_length <= 0:
            return
        self.conn.acknowledge_received_data(flow_length, stream_id)
        self.flush()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        self.streams.pop(stream.id, None)
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream.id, code)
        self.flush()
        self.stream_closed()

    def protocol_error(self, reason: str, detail: str) -> None:
        """The peer broke HTTP/2: GOAWAY with the right code, count, one line, close."""
        if self.closed:
            return
        self.close_reason = reason
        if self._on_protocol_error is not None:
            self._on_protocol_error(reason, detail)
        else:
            self.log.info(
                "HTTP/2 protocol error of the {side} ({reason}): {detail}",
                side="service" if self.client_side else "client",
                reason=reason,
                detail=detail,
            )
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closing
            self.conn.close_connection(error_code=error_code_for(reason))
        self.flush()
        self.lost()
        self.close_out(f"http2_{reason}")
