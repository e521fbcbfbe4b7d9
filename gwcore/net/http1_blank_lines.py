"""Empty lines before an HTTP/1.1 request line, skipped (RFC 9112 §2.2).

"In the interest of robustness, a server that is expecting to receive and parse a
request-line SHOULD ignore at least one empty line (CRLF) received prior to the
request-line." Clients do send one: a ``CRLF`` after a ``POST`` body (old browsers
did), or before the first request. llhttp (behind Envoy) and nginx skip them; h11
refuses them (``no request line received``: an empty line is an empty head to it).

h11 offers no way to drop bytes from its buffer, and a connection that raised is in
its ``ERROR`` state for good. Between requests, though, a server connection holds no
state but the bytes it buffered: when h11 refuses an empty line where a request line
was expected, :meth:`BlankLines.skip` makes a fresh h11 connection holding the bytes
after that line, and the codec goes on with it. The check costs nothing while clients
send no empty line (it runs only on h11's error).

Bounded: at most :data:`MAX_BLANK_LINES` empty lines before one request line; more is
a bad request line (``400``), as before. A ``CR`` at the end of a read may be the first
half of a ``CRLF``: it is kept aside for the next read (h11 refuses a lone ``CR`` as an
"obviously invalid" request line).
"""

from __future__ import annotations

import h11

MAX_BLANK_LINES = 4
"""Empty lines skipped before one request line (llhttp skips a few, nginx any number
within its header buffer; a bound keeps a client from feeding empty lines forever)."""

_EMPTY_LINE = "no request line received"  # h11: the buffer began with CRLF or LF
_BAD_LINE = "illegal request line"  # h11: the buffer begins with a byte below "!"


class BlankLines:
    """One client connection's empty lines before its current request line."""

    __slots__ = ("held_cr", "max_size", "skipped")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        """h11's ``max_incomplete_event_size`` for the fresh connections made here."""
        self.skipped = 0
        self.held_cr = False
        """A lone ``CR`` ended the last read where a request line was expected."""

    def request_line(self) -> None:
        """A request line came: the next one may again follow empty lines."""
        self.skipped = 0

    def take_held(self, data: bytes) -> bytes:
        """The bytes of a read, after the ``CR`` kept from the previous one."""
        self.held_cr = False
        return b"\r" + data

    def skip(self, conn: h11.Connection, error: h11.RemoteProtocolError) -> h11.Connection | None:
        """A fresh h11 connection to go on with if ``error`` was h11 refusing an empty
        line before a request line (within the bound), else None (a bad request)."""
        if conn.our_state is not h11.IDLE or self.skipped >= MAX_BLANK_LINES:
            return None  # a request is under way, or too many empty lines
        data, closed = conn.trailing_data
        text = str(error)
        if text == _EMPTY_LINE:
            self.skipped += 1  # h11 took the empty line out of its buffer
        elif text == _BAD_LINE and data == b"\r" and not closed:
            self.held_cr = True
            data = b""
        else:
            return None
        fresh = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_size)
        if data:
            fresh.receive_data(data)
        if closed:
            fresh.receive_data(b"")
        return fresh
