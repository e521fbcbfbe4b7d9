"""Unread bytes on a pooled HTTP/1.1 connection before it is handed on.

A connection that just completed a response goes straight to the next waiting request
(``Http1Pool._next``) inside the read that completed it. Bytes the service sent after
that response (a body on a ``HEAD`` or ``304`` answer, a wrong ``Content-Length``, a
second response) but in a later TCP segment are then still in the kernel's receive
buffer: read after the next request is written, they would be taken as its answer
(response poisoning across callers). Bytes in the same read are h11's
``trailing_data`` and the pool already refuses those; bytes read while the connection
sits idle close it (``send_to_client``). This covers the gap between the two: a
non-blocking ``MSG_PEEK`` of one byte on the service's socket — nginx makes the same
check (``c->read->ready``) before it keeps an upstream connection alive.

Anything there (a byte, or the end of the stream: the service closed) makes the
connection unusable. For TLS origination the peek sees encrypted bytes: a record after
a complete response (data, an alert, a close_notify) is as good a reason not to reuse.
"""

from __future__ import annotations

import socket
from typing import Any

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def unread_bytes(upstream: Any) -> bool:
    """Whether the service's socket holds bytes (or an end) not read yet."""
    get_handle = getattr(upstream.transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket):
        return False  # not a socket (a test double, a memory transport): nothing to peek
    try:
        sock.recv(1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return False  # nothing waiting: the usual case
    except OSError:
        return True  # a reset or a closed socket cannot carry a request either
    return True  # a byte, or b"": the service closed its side
