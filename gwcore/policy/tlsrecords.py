"""Counting whole TLS records in a byte stream, without decoding them.

The data path feeds OpenSSL through a memory BIO and then calls ``recv`` until
pyOpenSSL raises ``WantReadError``. That last call exists only to learn that the
BIO is empty, and a Python exception costs about as much as moving a small record
(~1.5 µs). OpenSSL returns at most one record's plaintext per ``recv``, so knowing
how many whole records have arrived tells the driver how many ``recv`` calls can
succeed: it makes exactly that many and skips the one that would raise.

Only the 5-byte record headers are read (``type``, ``version``, ``length``); the
count is a hint, never trusted for correctness: a record that yields no
application data (a KeyUpdate, a ticket, an alert) makes ``recv`` raise earlier,
which the caller handles as before. An unfinished record is simply not counted.
"""

from __future__ import annotations

HEADER = 5


class RecordCounter:
    """How many whole TLS records have been fed since the caller last reset ``complete``.

    ``feed(data)`` with every byte of the stream, in order; read and reset
    :attr:`complete` (the caller sets it to 0 once it has consumed those records).
    Memory is bounded: at most 4 bytes of a partial header are kept.
    """

    __slots__ = ("_body", "_header", "complete")

    def __init__(self) -> None:
        self.complete = 0
        self._body = 0  # bytes still to come of the current record's body
        self._header = b""  # a partial header (1-4 bytes) cut by the end of a chunk

    def feed(self, data: bytes) -> None:
        n = len(data)
        pos = 0
        done = 0
        body = self._body
        if body:
            if body > n:
                self._body = body - n
                return
            self._body = 0
            pos = body
            done = 1
        header = self._header
        if header:
            need = HEADER - len(header)
            header += data[pos : pos + need]
            pos += need
            if len(header) < HEADER:
                self._header = header
                self.complete += done
                return
            self._header = b""
            end = pos + ((header[3] << 8) | header[4])
            if end > n:
                self._body = end - n
                self.complete += done
                return
            pos = end
            done += 1
        while pos + HEADER <= n:
            end = pos + HEADER + ((data[pos + 3] << 8) | data[pos + 4])
            if end > n:
                self._body = end - n
                self.complete += done
                return
            pos = end
            done += 1
        if pos < n:
            self._header = data[pos:]
        self.complete += done


UNRECOGNIZED_NAME_ALERT = bytes((21, 3, 3, 0, 2, 2, 112))
"""A plaintext fatal ``unrecognized_name`` alert record (RFC 6066 §3; content type 21,
level 2 fatal, description 112), valid before any handshake keys exist."""
