"""Reading a TLS ClientHello without terminating TLS (sans-IO, incremental, bounded).

A mesh site routes on the server name a client sends and then forwards every byte
untouched, so it needs the ClientHello's ``server_name`` (and, cheaply, its ALPN
list) and nothing else. :class:`ClientHelloParser` takes the bytes a client sent,
in whatever pieces they arrived, and answers one of:

- :data:`NEED_MORE` — a normal answer: feed more bytes;
- :class:`ClientHello` — the parsed hello (``server_name`` is ``None`` when absent);
- :class:`HelloError` — a value, never an exception, whose ``reason`` is one of
  :data:`HELLO_ERROR_REASONS` (a metric label) and ``detail`` is for humans.

Once it answered anything but :data:`NEED_MORE`, the answer never changes.

Rules (RFC 8446 §5.1 and §4.1.2, RFC 6066 §3, RFC 7301 §3.1):

1. Records: type 22 (handshake), major version 3, payload length 1..2^14. Anything
   else before the hello is complete is ``not_tls`` (first record) or ``malformed``.
2. The hello may span several records; only the handshake message is reassembled.
   Its 4-byte header must say ClientHello (type 1) and a length no larger than
   ``max_length``; a larger one is ``too_large`` as soon as the header is read, so a
   64 KiB hello costs nine bytes, not 64 KiB.
3. The parser looks at no more than ``max_bytes`` bytes of the stream (records
   included): a hello not complete within them is ``too_large``. What it keeps is
   bounded by the same numbers, whatever a client sends.
4. Inside the hello every length must fit its container exactly; an extension seen
   twice, an empty server name list, or a server_name without a host_name entry is
   ``malformed``. Records after the hello (a TLS 1.3 client's change_cipher_spec or
   0-RTT data) are not looked at; they belong to the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
MAX_RECORD_PAYLOAD = 1 << 14
DEFAULT_MAX_LENGTH = 16 * 1024
"""A ClientHello (handshake message, header included) larger than this is refused.
Real ones are well under 2 KiB, post-quantum key shares included."""

_CONTENT_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME = 0

#: Every value :attr:`HelloError.reason` takes (bounded: it is a metric label).
HELLO_ERROR_REASONS: Final = frozenset(
    {"not_tls", "not_client_hello", "malformed", "too_large", "truncated"}
)


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()
"""Not enough bytes yet: feed more (or call :meth:`ClientHelloParser.eof`)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a mesh site needs from a ClientHello."""

    server_name: bytes | None  # the host_name as sent (not normalised), None if absent
    alpn: tuple[bytes, ...]  # protocols offered, in the client's order
    length: int  # bytes of the stream the hello took, record headers included


@dataclass(frozen=True, slots=True)
class HelloError:
    """Why the bytes are not a usable ClientHello."""

    reason: str
    detail: str


Result = _NeedMore | ClientHello | HelloError


class _MalformedError(Exception):
    """Internal: raised by the body parser, turned into a :class:`HelloError` value."""


class ClientHelloParser:
    """Incremental ClientHello reader for one connection (see the module docstring).

    ``max_length`` bounds the handshake message; ``max_bytes`` (default twice that)
    bounds how much of the stream is examined, which also bounds an attacker who
    fragments the hello into many tiny records.
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, max_bytes: int | None = None) -> None:
        self.max_length = max_length
        self.max_bytes = 2 * max_length if max_bytes is None else max_bytes
        self.examined = 0  # bytes of the stream taken in (never more than max_bytes)
        self._pending = bytearray()  # an incomplete record (header and partial payload)
        self._message = bytearray()  # the handshake message reassembled so far
        self._records = 0
        self._consumed = 0  # bytes of complete records taken into the message
        self._result: Result = NEED_MORE

    @property
    def result(self) -> Result:
        return self._result

    def feed(self, data: bytes) -> Result:
        """Take the next bytes the client sent; return the (possibly unchanged) answer."""
        if self._result is not NEED_MORE:
            return self._result
        room = self.max_bytes - self.examined
        taken = data[:room]
        self.examined += len(taken)
        self._pending += taken
        self._result = self._advance()
        if self._result is NEED_MORE and len(data) > len(taken):
            self._result = HelloError(
                "too_large", f"no complete ClientHello within {self.max_bytes} bytes"
            )
        if self._result is not NEED_MORE:
            self._pending.clear()
            self._message.clear()
        return self._result

    def eof(self) -> Result:
        """The client stopped sending: an unfinished hello is ``truncated``."""
        if self._result is NEED_MORE:
            self._result = HelloError(
                "truncated", f"the stream ended after {self.examined} bytes, inside the ClientHello"
            )
            self._pending.clear()
            self._message.clear()
        return self._result

    def _advance(self) -> Result:
        pending = self._pending
        while len(pending) >= RECORD_HEADER:
            content_type = pending[0]
            major = pending[1]
            length = int.from_bytes(pending[3:5], "big")
            if content_type != _CONTENT_HANDSHAKE or major != 3:
                reason = "not_tls" if self._records == 0 and not self._message else "malformed"
                return HelloError(
                    reason,
                    f"record type {content_type} version {major}.{pending[2]} where a TLS "
                    "handshake record was expected",
                )
            if length == 0 or length > MAX_RECORD_PAYLOAD:
                return HelloError("malformed", f"handshake record of {length} bytes")
            if len(pending) < RECORD_HEADER + length:
                break
            self._message += pending[RECORD_HEADER : RECORD_HEADER + length]
            del pending[: RECORD_HEADER + length]
            self._records += 1
            self._consumed += RECORD_HEADER + length
            answer = self._check_message()
            if answer is not NEED_MORE:
                return answer
        if self._message:
            return self._check_message()
        return NEED_MORE

    def _check_message(self) -> Result:
        message = self._message
        if message[0] != _CLIENT_HELLO:
            return HelloError(
                "not_client_hello", f"handshake message type {message[0]}, not ClientHello"
            )
        if len(message) < HANDSHAKE_HEADER:
            return NEED_MORE
        body_length = int.from_bytes(message[1:4], "big")
        total = HANDSHAKE_HEADER + body_length
        if total > self.max_length:
            return HelloError(
                "too_large", f"ClientHello of {total} bytes (at most {self.max_length})"
            )
        if len(message) < total:
            return NEED_MORE
        if len(message) > total:
            # A second handshake message glued to the hello is not something a client
            # sends before the server answered. (Whole records after it may be: a TLS
            # 1.3 client's change_cipher_spec or 0-RTT data. Those are not examined.)
            return HelloError("malformed", "a handshake message follows the ClientHello")
        try:
            server_name, alpn = _parse_body(message, HANDSHAKE_HEADER, total)
        except _MalformedError as e:
            return HelloError("malformed", str(e))
        return ClientHello(server_name, alpn, self._consumed)


# The body is read with offsets into the one reassembled buffer: ``_vector`` returns the
# bounds of a length-prefixed vector and checks that it fits its container, so nothing
# is copied but the server name and the ALPN names themselves.


def _vector(data: bytearray, pos: int, end: int, size: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` of the vector at ``pos`` whose length takes ``size`` (1 or 2)
    bytes; it must end by ``end``."""
    start = pos + size
    if start > end:
        raise _MalformedError(f"{what} length runs past its container")
    n = data[pos] if size == 1 else data[pos] << 8 | data[pos + 1]
    stop = start + n
    if stop > end:
        raise _MalformedError(f"{what} runs past its container")
    return start, stop


def _parse_body(data: bytearray, pos: int, end: int) -> tuple[bytes | None, tuple[bytes, ...]]:
    """Server name and ALPN list of the ClientHello body ``data[pos:end]``."""
    pos += 2 + 32  # legacy_version, random
    if pos > end:
        raise _MalformedError("random runs past its container")
    start, pos = _vector(data, pos, end, 1, "legacy_session_id")
    if pos - start > 32:
        raise _MalformedError("legacy_session_id longer than 32 bytes")
    start, pos = _vector(data, pos, end, 2, "cipher_suites")
    if pos - start < 2 or (pos - start) % 2:
        raise _MalformedError(f"cipher_suites of {pos - start} bytes")
    start, pos = _vector(data, pos, end, 1, "legacy_compression_methods")
    if pos == start:
        raise _MalformedError("no compression method")
    if pos == end:
        return None, ()  # no extensions at all (TLS 1.2 and older may omit them)
    pos, extensions_end = _vector(data, pos, end, 2, "extensions")
    if extensions_end != end:
        raise _MalformedError(f"{end - extensions_end} bytes after the extensions")
    seen: set[int] = set()
    server_name: bytes | None = None
    alpn: tuple[bytes, ...] = ()
    while pos < extensions_end:
        if pos + 2 > extensions_end:
            raise _MalformedError("extension type runs past its container")
        kind = data[pos] << 8 | data[pos + 1]
        start, pos = _vector(data, pos + 2, extensions_end, 2, f"extension {kind}")
        if kind in seen:
            raise _MalformedError(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(data, start, pos)
        elif kind == _EXT_ALPN:
            alpn = _alpn(data, start, pos)
    return server_name, alpn


def _server_name(data: bytearray, pos: int, end: int) -> bytes:
    pos, names_end = _vector(data, pos, end, 2, "server_name_list")
    if names_end != end:
        raise _MalformedError("bytes after server_name_list")
    if pos == names_end:
        raise _MalformedError("empty server_name_list")
    host: bytes | None = None
    while pos < names_end:
        name_type = data[pos]
        start, pos = _vector(data, pos + 1, names_end, 2, "server name")
        if name_type == _HOST_NAME:
            if host is not None:
                raise _MalformedError("two host_name entries")  # RFC 6066 §3
            if pos == start:
                raise _MalformedError("empty host_name")
            host = bytes(data[start:pos])
    if host is None:
        raise _MalformedError("server_name has no host_name entry")
    return host


def _alpn(data: bytearray, pos: int, end: int) -> tuple[bytes, ...]:
    pos, protocols_end = _vector(data, pos, end, 2, "protocol_name_list")
    if protocols_end != end:
        raise _MalformedError("bytes after protocol_name_list")
    found: list[bytes] = []
    while pos < protocols_end:
        start, pos = _vector(data, pos, protocols_end, 1, "protocol name")
        if pos == start:
            raise _MalformedError("empty ALPN protocol name")
        found.append(bytes(data[start:pos]))
    if not found:
        raise _MalformedError("empty protocol_name_list")
    return tuple(found)
