"""Bounded use of OpenSSL's memory BIOs, one socket write per read, and the record
calls of the data path made without pyOpenSSL's per-call overhead.

A memory BIO keeps the largest capacity it ever reached for the life of its
connection. Feeding a whole 256 KiB socket read into it (or ``sendall`` of a whole
upstream read) left every connection that once moved a burst holding about 670 KiB
while idle. Handing OpenSSL at most :data:`BIO_FEED` bytes at a time, and draining
in between, keeps it small (docs/reliability.md, held connections;
tests/net/test_held_memory.py).

Outgoing plaintext is encrypted in records of at most :data:`BIO_SEND` bytes, TLS's
largest (what HAProxy and nginx send too), and the BIO is drained after each record;
the ciphertext of a whole read is then written with one call
(``transport.writeSequence``: one ``sendmsg`` on the gateway's transports). Records
of 4 KiB, each written on its own, cost a 1 MiB response 256 records and as many
``send`` calls; 16 KiB records written together cost 64 records and about 4 calls.

Incoming ciphertext is decrypted by :meth:`RecordIO.decrypt`: one ``SSL_read`` per
whole record (OpenSSL hands out at most one record's plaintext per call and, without
read-ahead, takes from the BIO only the record it decrypts), until the BIO is empty
or OpenSSL wants more bytes. That answer is read from ``SSL_get_error`` and the
BIOs' lengths rather than from a raised ``WantReadError`` (a Python exception costs
about as much as relaying a small record), so no separate record count is kept.

:class:`RecordIO` makes the four calls a relayed record needs (``bio_write``,
``recv``, ``sendall``, ``bio_read``) on the connection's OpenSSL objects directly.
Through pyOpenSSL's :class:`~OpenSSL.SSL.Connection` each call pays for argument
conversion, an error check that asks OpenSSL even after a success, and a dozen
attribute lookups through the class's ``__getattr__`` hook (which also keeps
CPython from specialising them): about twice the cost of the OpenSSL work for a
1 KiB record. The errors are pyOpenSSL's own (raised by its own code), and
:func:`record_io` falls back to the public methods if pyOpenSSL ever stops
having the attributes this relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

BIO_FEED = 4 * 1024
"""The most ciphertext bytes written into a memory BIO at once."""

BIO_SEND = 16 * 1024
"""The most plaintext bytes per ``sendall`` (one TLS record, RFC 8446 §5.1) before
the BIO is drained."""

BIO_CHUNK = 1 << 17
"""Bytes asked of the outgoing BIO per ``bio_read`` (more than it ever holds)."""

READ_SIZE = 1 << 16
"""Bytes asked of OpenSSL per ``recv`` (it returns at most one record: 16 KiB)."""

# What RecordIO uses of pyOpenSSL's Connection and of its cffi binding.
_PRIVATE = ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error", "_handle_bio_errors")
_DIRECT = all(
    hasattr(_lib, name)
    for name in (
        "SSL_write",
        "SSL_read",
        "SSL_get_error",
        "BIO_read",
        "BIO_write",
        "BIO_get_mem_data",
    )
)
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_NULL = _ffi.NULL

# One buffer per direction for the whole process, reused by every connection instead
# of one allocation per record: OpenSSL fills it and the bytes are copied out
# (``ffi.unpack``) before the call returns, so nothing refers to it afterwards and an
# idle connection holds none of it. Only the reactor's thread relays records.
_READ_BUFFER = _ffi.new("char[]", READ_SIZE)
_DRAIN_BUFFER = _ffi.new("char[]", BIO_CHUNK)


def pieces(data: bytes, size: int = BIO_FEED) -> Iterable[bytes]:
    """``data`` in slices of at most ``size`` bytes (``(data,)`` when it fits: the
    usual case, without a generator)."""
    if len(data) <= size:
        return (data,)
    return _slices(data, size)


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    # Made one at a time: a 256 KiB read is never copied whole into slices.
    for start in range(0, len(data), size):
        yield data[start : start + size]


class RecordIO:
    """The data-path calls on one memory-BIO ``SSL.Connection`` (module docstring).

    Made once per connection, after the connection object exists; holding it keeps
    the connection (and so its OpenSSL objects) alive. Only for the reactor's thread:
    every connection's records pass through the same two buffers.
    """

    __slots__ = ("_from", "_into", "_ssl", "tls")

    def __init__(self, tls: SSL.Connection) -> None:
        self.tls = tls
        self._ssl = tls._ssl  # type: ignore[attr-defined]
        self._into = tls._into_ssl  # type: ignore[attr-defined]
        self._from = tls._from_ssl  # type: ignore[attr-defined]

    def feed(self, data: bytes) -> None:
        """Ciphertext from the peer into the incoming BIO (``bio_write``)."""
        written = _lib.BIO_write(self._into, data, len(data))
        if written <= 0:
            self.tls._handle_bio_errors(self._into, written)  # type: ignore[attr-defined]

    def read(self) -> bytes:
        """The plaintext of the next whole record (``recv``); raises what pyOpenSSL
        raises: ``WantReadError`` (no whole record with data), ``ZeroReturnError``
        (the peer's ``close_notify``), ``SSL.Error``."""
        got = _lib.SSL_read(self._ssl, _READ_BUFFER, READ_SIZE)
        if got <= 0:
            self.tls._raise_ssl_error(self._ssl, got)  # type: ignore[attr-defined]
            return b""
        return _ffi.unpack(_READ_BUFFER, got)

    def decrypt(self, plain: list[bytes]) -> bool:
        """Append the plaintext of every whole record fed so far to ``plain``, one
        record per ``SSL_read``, in order; stop when the incoming BIO is empty or
        OpenSSL needs more bytes (a partial record, which it keeps; or a record
        without data: a ticket, a KeyUpdate).

        Returns whether OpenSSL wrote something to send meanwhile (a KeyUpdate's
        answer, an alert): the caller then flushes. Raises ``ZeroReturnError`` at the
        peer's ``close_notify`` and ``SSL.Error`` on a failure, as pyOpenSSL's ``recv``
        does; ``plain`` then holds the records that came before it.
        """
        return self.receive(b"", plain)

    def receive(self, data: bytes, plain: list[bytes]) -> bool:
        """:meth:`feed` ``data`` (if any), then :meth:`decrypt`: the relay's step per
        read, made as one call."""
        ssl = self._ssl
        into = self._into
        if data:
            written = _lib.BIO_write(into, data, len(data))
            if written <= 0:
                self.tls._handle_bio_errors(into, written)  # type: ignore[attr-defined]
        buf = _READ_BUFFER
        while True:
            got = _lib.SSL_read(ssl, buf, READ_SIZE)
            if got <= 0:
                if _lib.SSL_get_error(ssl, got) != _WANT_READ:
                    self.tls._raise_ssl_error(ssl, got)  # type: ignore[attr-defined]
                break
            plain.append(_ffi.unpack(buf, got))
            # Without read-ahead OpenSSL took only this record from the BIO (and never
            # holds more plaintext than one record: READ_SIZE > 16 KiB). An empty BIO
            # means no whole record is left, and saves the call that would say so.
            if _lib.BIO_get_mem_data(into, _NULL) == 0:
                break
        return _lib.BIO_get_mem_data(self._from, _NULL) > 0

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt all of ``data`` into the outgoing BIO (``sendall``). pyOpenSSL's
        contexts allow partial writes: a peer's smaller record size limit makes
        OpenSSL take one record per call."""
        ssl = self._ssl
        size = len(data)
        with _ffi.from_buffer(data) as buf:
            done = 0
            while done < size:
                written = _lib.SSL_write(ssl, buf + done, size - done)
                if written <= 0:
                    self.tls._raise_ssl_error(ssl, written)  # type: ignore[attr-defined]
                    raise SSL.Error(f"SSL_write returned {written}")
                done += written

    def drain(self, out: list[bytes]) -> None:
        """Append everything OpenSSL wrote into its outgoing BIO to ``out``
        (``bio_read`` until it is empty)."""
        buf = _DRAIN_BUFFER
        while True:
            got = _lib.BIO_read(self._from, buf, BIO_CHUNK)
            if got <= 0:  # empty (a memory BIO has no other failure)
                return
            out.append(_ffi.unpack(buf, got))
            if got < BIO_CHUNK:
                return

    def encrypt(self, data: bytes) -> list[bytes]:
        """``data`` encrypted in records of at most :data:`BIO_SEND` bytes, the BIO
        drained after each: the ciphertext pieces, in order, for one ``writeSequence``.

        :meth:`write` and :meth:`drain` in one call (this runs once per read of the
        other side): each ``SSL_write`` makes one record, as OpenSSL may take less
        than asked (a peer's smaller record size limit), and what it wrote is read
        out of the BIO at once, which so never holds more than a record.
        """
        out: list[bytes] = []
        ssl = self._ssl
        bio = self._from
        buf = _DRAIN_BUFFER
        size = len(data)
        with _ffi.from_buffer(data) as source:
            done = 0
            while done < size:
                left = size - done
                written = _lib.SSL_write(ssl, source + done, BIO_SEND if left > BIO_SEND else left)
                if written <= 0:
                    self.tls._raise_ssl_error(ssl, written)  # type: ignore[attr-defined]
                    raise SSL.Error(f"SSL_write returned {written}")
                done += written
                got = _lib.BIO_read(bio, buf, BIO_CHUNK)
                while got > 0:  # <= 0: empty (a memory BIO has no other failure)
                    out.append(_ffi.unpack(buf, got))
                    got = _lib.BIO_read(bio, buf, BIO_CHUNK) if got == BIO_CHUNK else 0
        return out

    def flush(self, write: Callable[[bytes], Any]) -> None:
        """Everything in the outgoing BIO to ``write`` (the socket), piece by piece."""
        out: list[bytes] = []
        self.drain(out)
        for data in out:
            write(data)


class PublicRecordIO(RecordIO):
    """:class:`RecordIO` through pyOpenSSL's public methods (the fallback)."""

    __slots__ = ()

    def __init__(self, tls: SSL.Connection) -> None:
        self.tls = tls

    def feed(self, data: bytes) -> None:
        self.tls.bio_write(data)

    def read(self) -> bytes:
        return self.tls.recv(READ_SIZE)

    def decrypt(self, plain: list[bytes]) -> bool:
        while True:
            try:
                plain.append(self.tls.recv(READ_SIZE))
            except SSL.WantReadError:
                return True  # whether OpenSSL wrote is not known here: flush

    def receive(self, data: bytes, plain: list[bytes]) -> bool:
        if data:
            self.feed(data)
        return self.decrypt(plain)

    def encrypt(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        for start in range(0, len(data), BIO_SEND):
            self.write(view[start : start + BIO_SEND])
            self.drain(out)
        return out

    def write(self, data: bytes | memoryview) -> None:
        self.tls.sendall(data)

    def drain(self, out: list[bytes]) -> None:
        while True:
            try:
                data = self.tls.bio_read(BIO_CHUNK)
            except SSL.WantReadError:
                return
            out.append(data)
            if len(data) < BIO_CHUNK:
                return


def record_io(tls: SSL.Connection) -> RecordIO:
    """The data-path calls for ``tls`` (a memory-BIO connection): direct when this
    pyOpenSSL has what :class:`RecordIO` relies on, else through its methods."""
    if _DIRECT and all(hasattr(tls, name) for name in _PRIVATE):
        return RecordIO(tls)
    return PublicRecordIO(tls)
