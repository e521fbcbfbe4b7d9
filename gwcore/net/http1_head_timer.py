"""The request-head timeout of an HTTP/1.1 client connection (site key
``request_head_timeout``, docs/l7.md).

A client gets ``timeout`` seconds from the **first byte** of a request head to the
head's end; a slowloris that trickles a head byte by byte otherwise holds its
connection until the site's ``idle_timeout``. The wait *before* that first byte (a
new connection, or a kept-alive one between requests) is not a head being late: it
is the connection's idle time, which the site's ``idle_timeout`` governs (no byte
moved for that long: closed). That is Envoy's split: the connection manager's
``request_headers_timeout`` counts from the head's first byte, its ``idle_timeout``
(1 h by default) covers a connection without an active request. nginx's
``client_header_timeout`` (60 s) is the same limit. ``0`` turns it off.

The codec says :meth:`HeadTimer.arm` when it starts to wait for a head (``started``:
bytes of it are already buffered, e.g. pipelined), :meth:`HeadTimer.data` at every
read, :meth:`HeadTimer.disarm` once the head is complete, and :meth:`HeadTimer.stop`
when the connection is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HeadTimer:
    """One connection's head deadline, counted from the first byte of a head.

    Heads start and complete around every request of a kept-alive connection, so
    that only moves a deadline: one ``DelayedCall`` stays scheduled and, when it comes
    due, either expires the head, reschedules itself for a later deadline, or ends (no
    head pending). A connection pays for a timer once per ``timeout``, not per request.
    """

    __slots__ = ("call", "clock", "deadline", "on_expire", "timeout", "waiting")

    def __init__(self, clock: Any, timeout: float, on_expire: Callable[[], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_expire = on_expire
        self.call: Any = None
        self.deadline: float | None = None
        self.waiting = False
        """A head is awaited and none of it came yet: the next byte starts the deadline."""

    def arm(self, started: bool = False) -> None:
        """The codec waits for a request head; ``started``: part of it is already here."""
        self.disarm()
        if self.clock is not None and self.timeout > 0:
            if started:
                self._start()
            else:
                self.waiting = True

    def data(self) -> None:
        """Bytes came from the client: if a head was awaited, its deadline starts now."""
        if self.waiting:
            self._start()

    def disarm(self) -> None:
        """No head is pending (the scheduled call, if any, finds nothing to do)."""
        self.waiting = False
        self.deadline = None

    def stop(self) -> None:
        """The connection is gone: nothing stays scheduled."""
        self.disarm()
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _start(self) -> None:
        self.waiting = False
        self.deadline = self.clock.seconds() + self.timeout
        if self.call is None:
            self.call = self.clock.callLater(self.timeout, self._due)

    def _due(self) -> None:
        self.call = None
        deadline = self.deadline
        if deadline is None:
            return
        left = deadline - self.clock.seconds()
        if left > 0:  # started again since this call was scheduled
            self.call = self.clock.callLater(left, self._due)
            return
        self.deadline = None
        self.on_expire()
