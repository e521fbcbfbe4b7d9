"""Bounded use of OpenSSL's memory BIOs.

A memory BIO keeps the largest capacity it ever reached for the life of its
connection. Feeding a whole 256 KiB socket read into it (or ``sendall`` of a whole
upstream read) left every connection that once moved a burst holding about 670 KiB
while idle. Handing OpenSSL at most :data:`BIO_FEED` bytes at a time, and draining
in between, keeps it to about 40 KiB (docs/reliability.md, held connections;
tests/net/test_held_memory.py). Outgoing plaintext in :data:`BIO_SEND` pieces also makes
records of at most 4 KiB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

BIO_FEED = 4 * 1024
"""The most ciphertext bytes written into a memory BIO at once."""

BIO_SEND = 4 * 1024
"""The most plaintext bytes given to one ``sendall`` before the BIO is drained."""


def pieces(data: bytes, size: int = BIO_FEED) -> Iterator[bytes]:
    """``data`` in slices of at most ``size`` bytes (``data`` itself when it fits)."""
    if len(data) <= size:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


def send_bounded(tls: Any, data: bytes, flush: Callable[[], None]) -> None:
    """``tls.sendall(data)`` in :data:`BIO_SEND` pieces, calling ``flush`` after each."""
    view = memoryview(data)
    for start in range(0, len(data), BIO_SEND):
        tls.sendall(view[start : start + BIO_SEND])
        flush()
