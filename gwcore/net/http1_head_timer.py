"""The request-head timeout of an HTTP/1.1 client connection (site key
``request_head_timeout``, docs/l7.md).

A client gets ``timeout`` seconds from the connection's start, or from the end of the
previous response, to deliver a complete request head; a slowloris that trickles a
head byte by byte, or never sends one, otherwise holds its connection until the
site's ``idle_timeout``. Envoy's equivalent is the connection manager's
``request_headers_timeout`` (off by default, counted from the head's first byte);
nginx's is ``client_header_timeout`` (60 s). ``0`` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HeadTimer:
    """One connection's head deadline: armed while the codec waits for a head.

    Arming and disarming happen around every request of a kept-alive connection, so
    they only move a deadline: one ``DelayedCall`` stays scheduled and, when it comes
    due, either expires the head, reschedules itself for a later deadline, or ends
    (disarmed). A connection pays for a timer once per ``timeout``, not per request.
    """

    __slots__ = ("call", "clock", "deadline", "on_expire", "timeout")

    def __init__(self, clock: Any, timeout: float, on_expire: Callable[[], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_expire = on_expire
        self.call: Any = None
        self.deadline: float | None = None

    def arm(self) -> None:
        if self.clock is None or self.timeout <= 0:
            return
        self.deadline = self.clock.seconds() + self.timeout
        if self.call is None:
            self.call = self.clock.callLater(self.timeout, self._due)

    def disarm(self) -> None:
        self.deadline = None  # the scheduled call finds nothing to do

    def stop(self) -> None:
        """The connection is gone: nothing stays scheduled."""
        self.deadline = None
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self.call = None
        deadline = self.deadline
        if deadline is None:
            return
        left = deadline - self.clock.seconds()
        if left > 0:  # re-armed since this call was scheduled
            self.call = self.clock.callLater(left, self._due)
            return
        self.deadline = None
        self.on_expire()
