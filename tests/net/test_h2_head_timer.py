"""The HTTP/2 request-head timeout (``gwcore.net.h2_head_timer``) on the downstream codec
(``gwcore.net.h2_downstream``), in memory: real HTTP/2 frames (``h2`` client preface,
``hpack``-encoded header blocks framed by ``hyperframe``) fed to the codec read by read,
a ``task.Clock`` for the deadline, a ClientLink collecting what the codec writes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame
from twisted.internet.task import Clock

from gwcore.net.h2_downstream import Http2Server
from gwcore.net.h2_head_timer import header_block_pending
from gwcore.net.l7_core import L7Limits
from tests.h2_peers import request_head

TIMEOUT = 10.0


class _Link:
    """A ClientLink in memory: what the codec writes, why it closed, what it counted."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed: str | None = None
        self.bad: list[str] = []

    def write(self, data: bytes) -> None:
        self.out += data

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self, cause: str) -> None:
        self.closed = cause

    def bad_request(self, reason: str, detail: str) -> None:
        self.bad.append(reason)


class _Starter:
    """An ExchangeStarter that records the paths of the requests it was given."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def start(self, request: Any, writer: Any) -> Any:
        self.paths.append(request.path)
        return SimpleNamespace(
            request_producer=None,
            request_data=lambda data: None,
            request_end=lambda trailers=None: None,
            client_gone=lambda reason: None,
        )


def _codec(timeout: float = TIMEOUT) -> tuple[Http2Server, _Link, _Starter, Clock]:
    clock, link, starter = Clock(), _Link(), _Starter()
    codec = Http2Server(link, starter, L7Limits(request_head_timeout=timeout, clock=clock))
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    codec.data_received(client.data_to_send())  # preface and SETTINGS
    return codec, link, starter, clock


def _block_frames(stream_id: int, path: str, pieces: int, encoder: Encoder) -> list[bytes]:
    """A GET's header block as HEADERS + CONTINUATION frames, ``pieces`` in all."""
    block = encoder.encode(request_head(path=path, method="GET"))
    size = -(-len(block) // pieces)
    chunks = [block[i : i + size] for i in range(0, len(block), size)]
    assert len(chunks) == pieces
    frames = []
    for n, chunk in enumerate(chunks):
        frame: Any = HeadersFrame(stream_id) if n == 0 else ContinuationFrame(stream_id)
        if n == 0:
            frame.flags.add("END_STREAM")
        if n == len(chunks) - 1:
            frame.flags.add("END_HEADERS")
        frame.data = chunk
        frames.append(frame.serialize())
    return frames


def _goaway(out: bytes) -> GoAwayFrame | None:
    view = memoryview(out)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, GoAwayFrame):
            return frame
        view = view[9 + length :]
    return None


def test_trickled_continuation_frames_end_the_connection_at_the_deadline() -> None:
    """Slowloris over HTTP/2: HEADERS without END_HEADERS, then one CONTINUATION frame
    every 0.3 of the timeout, so bytes keep moving. At ``request_head_timeout`` from the
    HEADERS frame the connection gets GOAWAY PROTOCOL_ERROR (last stream 0: the late
    one was never processed), ``request_head_timeout`` is counted once and it closes;
    no exchange was started."""
    codec, link, starter, clock = _codec()
    frames = _block_frames(1, "/slow", 6, Encoder())
    for frame in frames[:4]:
        codec.data_received(frame)
        assert link.closed is None
        clock.advance(TIMEOUT * 0.3)
    goaway = _goaway(bytes(link.out))
    assert goaway is not None
    assert (goaway.error_code, goaway.last_stream_id) == (ErrorCodes.PROTOCOL_ERROR, 0)
    assert link.bad == ["request_head_timeout"]
    assert link.closed == "http2_request_head_timeout"
    assert starter.paths == [] and not clock.getDelayedCalls()


def test_a_headers_frame_trickled_byte_by_byte_is_timed_too() -> None:
    """One HEADERS frame (with END_HEADERS) sent a byte at a time, before its type
    octet and after it: the deadline runs from the first read, not from each byte."""
    codec, link, starter, clock = _codec()
    (frame,) = _block_frames(1, "/bytes", 1, Encoder())
    for n in range(len(frame) - 1):
        codec.data_received(frame[n : n + 1])
        clock.advance(TIMEOUT / (len(frame) - 2) * 1.01)
        if link.closed:
            break
    assert link.bad == ["request_head_timeout"] and starter.paths == []


def test_a_header_block_that_never_ends_is_closed_at_the_deadline_not_before() -> None:
    """HEADERS without END_HEADERS, then silence: the connection stays until the
    deadline and is closed at it."""
    codec, link, _, clock = _codec()
    codec.data_received(_block_frames(1, "/never", 2, Encoder())[0])
    clock.advance(TIMEOUT * 0.99)
    assert link.closed is None
    clock.advance(TIMEOUT * 0.02)
    assert link.closed == "http2_request_head_timeout"


def test_a_slow_block_complete_in_time_is_served_and_leaves_no_deadline() -> None:
    """A block trickled over 0.9 of the timeout is a request like any other; once it is
    complete, no deadline is left (a long wait after it closes nothing)."""
    codec, link, starter, clock = _codec()
    frames = _block_frames(1, "/patient", 4, Encoder())
    for frame in frames:
        codec.data_received(frame)
        clock.advance(TIMEOUT * 0.3)
    assert starter.paths == ["/patient"]
    assert not clock.getDelayedCalls()
    clock.advance(TIMEOUT * 100)
    assert link.closed is None and link.bad == []


def test_each_block_gets_its_own_deadline_when_one_starts_in_the_read_ending_another() -> None:
    """Block B begins in the read that completes block A: B's deadline counts from that
    read, not from A's first bytes."""
    codec, link, starter, clock = _codec()
    encoder = Encoder()
    a = _block_frames(1, "/a", 2, encoder)
    b = _block_frames(3, "/b", 2, encoder)
    codec.data_received(a[0])
    clock.advance(TIMEOUT * 0.8)
    codec.data_received(a[1] + b[0])
    assert starter.paths == ["/a"]
    clock.advance(TIMEOUT * 0.8)  # 1.6 timeouts since A began, 0.8 since B did
    assert link.closed is None
    clock.advance(TIMEOUT * 0.3)
    assert link.bad == ["request_head_timeout"]
    goaway = _goaway(bytes(link.out))
    assert goaway is not None and goaway.last_stream_id == 1


def test_an_idle_connection_and_a_slow_body_are_not_timed() -> None:
    """Between requests (no bytes of a block buffered) and while a DATA frame trickles
    in, no deadline is armed: the site's ``idle_timeout`` governs those."""
    codec, link, starter, clock = _codec()
    encoder = Encoder()
    codec.data_received(_block_frames(1, "/one", 1, encoder)[0])
    assert not clock.getDelayedCalls()
    clock.advance(TIMEOUT * 50)
    body_head = HeadersFrame(3, data=encoder.encode(request_head(path="/up")))
    body_head.flags.add("END_HEADERS")
    data = DataFrame(3, data=b"x" * 100, flags=["END_STREAM"]).serialize()
    codec.data_received(body_head.serialize() + data[:20])
    assert not clock.getDelayedCalls()
    clock.advance(TIMEOUT * 5)
    codec.data_received(data[20:])
    assert starter.paths == ["/one", "/up"]
    assert link.closed is None and link.bad == []


def test_zero_turns_the_http2_head_timeout_off() -> None:
    """``request_head_timeout = 0``: a never-ending block arms nothing."""
    codec, link, _, clock = _codec(timeout=0)
    codec.data_received(_block_frames(1, "/never", 2, Encoder())[0])
    assert not clock.getDelayedCalls() and link.closed is None


def test_header_block_pending_reads_h2s_frame_buffer() -> None:
    """``header_block_pending`` on h2's own FrameBuffer: an open block, a partial
    HEADERS frame and a frame header short of its type octet are pending; nothing
    buffered, a partial DATA frame or whole frames are not (pins the h2 internals it
    reads)."""

    def buffered(data: bytes) -> bool:
        buffer = FrameBuffer(server=False)
        buffer.max_frame_size = 16384
        buffer.add_data(data)
        list(buffer)
        return header_block_pending(buffer)

    two = _block_frames(1, "/p", 2, Encoder())
    (whole,) = _block_frames(1, "/p", 1, Encoder())
    data = DataFrame(1, data=b"x" * 50).serialize()
    assert buffered(two[0]) and buffered(whole[:-1]) and buffered(whole[:3])
    assert not buffered(b"") and not buffered(whole) and not buffered(data[:30])
    assert not buffered(two[0] + two[1])
