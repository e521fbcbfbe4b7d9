"""Bounded use of OpenSSL's memory BIOs, and one socket write per read.

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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from OpenSSL import SSL

BIO_FEED = 4 * 1024
"""The most ciphertext bytes written into a memory BIO at once."""

BIO_SEND = 16 * 1024
"""The most plaintext bytes per ``sendall`` (one TLS record, RFC 8446 §5.1) before
the BIO is drained."""

BIO_CHUNK = 1 << 17
"""Bytes asked of the outgoing BIO per ``bio_read`` (more than it ever holds)."""


def pieces(data: bytes, size: int = BIO_FEED) -> Iterator[bytes]:
    """``data`` in slices of at most ``size`` bytes (``data`` itself when it fits)."""
    if len(data) <= size:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def drain(tls: Any, out: list[bytes]) -> None:
    """Append everything OpenSSL wrote into its outgoing memory BIO to ``out``.

    A read shorter than the chunk means the BIO is empty, which saves the call that
    would only raise ``WantReadError``.
    """
    while True:
        try:
            data = tls.bio_read(BIO_CHUNK)
        except SSL.WantReadError:
            return
        out.append(data)
        if len(data) < BIO_CHUNK:
            return


def encrypt(tls: Any, data: bytes) -> list[bytes]:
    """``data`` encrypted in records of at most :data:`BIO_SEND` bytes, the BIO drained
    after each: the ciphertext pieces, in order, for one ``writeSequence``."""
    out: list[bytes] = []
    if len(data) <= BIO_SEND:
        tls.sendall(data)
        drain(tls, out)
        return out
    view = memoryview(data)
    for start in range(0, len(data), BIO_SEND):
        tls.sendall(view[start : start + BIO_SEND])
        drain(tls, out)
    return out
