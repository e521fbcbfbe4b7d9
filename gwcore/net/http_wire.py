"""Header fields to the bytes h11 sends.

``Headers`` holds names and values as latin-1 text (``gwcore.contract.http_flow``), so
every byte a peer sent, obs-text (RFC 9110 §5.5: bytes 0x80-0xFF) included, goes out
as it came in. h11 encodes a ``str`` as ASCII and raises on anything else: hand it
bytes instead.
"""

from __future__ import annotations

from collections.abc import Iterable


def latin1_fields(fields: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """``fields`` as (name, value) bytes, latin-1 (raises ``UnicodeError`` beyond U+00FF)."""
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields]


def text_fields(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """h11's ``headers.raw_items()`` as latin-1 text (every byte round-trips)."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def ambiguous_framing(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """A message with both ``Content-Length`` and ``Transfer-Encoding``: RFC 9112 §6.3
    lets Transfer-Encoding win, but a peer that reads the length instead frames it
    differently (smuggling, desync); an intermediary refuses it rather than pass it on."""
    names = {k.lower() for k, _ in fields}
    return b"content-length" in names and b"transfer-encoding" in names
