"""The request-head timeout of an HTTP/2 client connection (site key
``request_head_timeout``, as :mod:`gwcore.net.http1_head_timer` for HTTP/1.1).

A client gets ``timeout`` seconds for a **header block** (a request head, or
trailers): from the read that brought its first bytes to the one that brought its
end. A slowloris that trickles a HEADERS frame, or HEADERS then CONTINUATION frames
one by one, keeps bytes moving, so the site's ``idle_timeout`` never fires; this does.

Why per connection, and why the connection ends: a header block is one HPACK unit
sent as a contiguous run of frames, nothing of any other stream between them
(RFC 9113 §4.3, §6.10). While one is open, no other stream of the connection can
send a frame, and the block cannot be dropped without losing the HPACK state both
sides share. So a late block is a connection error: GOAWAY ``PROTOCOL_ERROR`` and a
close (what nginx does when a read times out mid-frame on an HTTP/2 connection, its
``client_header_timeout``), counted as the bad-request reason ``request_head_timeout``. The GOAWAY's
last stream is the newest *complete* head, so the client knows the late one was never
processed. Envoy's ``request_headers_timeout`` times the same span per stream (from the
stream's first HEADERS frame to its last header) and answers 408 on that stream.

What is *not* timed: a connection with no partial header block (idle between
requests, or streaming bodies) — that is the ``idle_timeout``'s; and DATA frames.

``h2`` reports a header block only once it is complete (its frame buffer holds the
HEADERS and CONTINUATION frames until END_HEADERS, and a partial frame's bytes), so
:func:`header_block_pending` looks at that buffer after each read. Those attributes
are ``h2``'s private ones (``h2>=4.4``); ``tests/net/test_h2_head_timer.py`` pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from h2.frame_buffer import FrameBuffer
from hyperframe.frame import ContinuationFrame, HeadersFrame

TYPE_OCTET = 3
"""Offset of the type in an HTTP/2 frame header (RFC 9113 §4.1: length 3, type 1, ...)."""

_HEADER_BLOCK_TYPES = frozenset((HeadersFrame.type, ContinuationFrame.type))


def header_block_pending(buffer: FrameBuffer) -> bool:
    """Whether ``h2``'s frame buffer holds part of a header block.

    Either a HEADERS frame without END_HEADERS waits for its CONTINUATION frames, or
    the bytes after the last whole frame are a HEADERS/CONTINUATION frame in part. A
    frame header still short of its type octet counts too: it may be one.
    """
    if buffer._headers_buffer:
        return True
    partial = buffer._data
    if not partial:
        return False
    return len(partial) <= TYPE_OCTET or partial[TYPE_OCTET] in _HEADER_BLOCK_TYPES


class H2HeadTimer:
    """One connection's header-block deadline (module docstring).

    The codec calls :meth:`after_read` after each read it gave ``h2``; ``progressed``
    says the read completed at least one frame ``h2`` reported (a block that was open
    before is then over, and one open now is a new one).
    """

    __slots__ = ("call", "clock", "on_expire", "timeout")

    def __init__(self, clock: Any, timeout: float, on_expire: Callable[[], None]) -> None:
        # No clock or no timeout: never armed (``0`` turns the limit off).
        self.clock = clock if timeout > 0 else None
        self.timeout = timeout
        self.on_expire = on_expire
        self.call: Any = None

    def after_read(self, buffer: FrameBuffer, progressed: bool) -> None:
        if self.clock is None:
            return
        if progressed and self.call is not None:
            self.cancel()
        if header_block_pending(buffer):
            if self.call is None:
                self.call = self.clock.callLater(self.timeout, self._expired)
        elif self.call is not None:
            self.cancel()

    def cancel(self) -> None:
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        self.call = None
        self.on_expire()
