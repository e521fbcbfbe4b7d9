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
    """One connection's head deadline: armed while the codec waits for a head."""

    __slots__ = ("call", "clock", "on_expire", "timeout")

    def __init__(self, clock: Any, timeout: float, on_expire: Callable[[], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_expire = on_expire
        self.call: Any = None

    def arm(self) -> None:
        self.disarm()
        if self.clock is not None and self.timeout > 0:
            self.call = self.clock.callLater(self.timeout, self._expired)

    def disarm(self) -> None:
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        self.call = None
        self.on_expire()
