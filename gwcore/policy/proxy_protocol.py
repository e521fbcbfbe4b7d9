"""The PROXY protocol, versions 1 and 2 (HAProxy's ``proxy-protocol.txt``), sans-IO.

A load balancer in front of a site (``proxy_protocol = true``) sends one header
before the client's first byte, naming the client's address. :func:`parse` reads it
from the start of a connection's bytes:

- **v1**: one text line ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
  ``PROXY UNKNOWN ...\\r\\n``, at most 107 bytes including CRLF;
- **v2**: the 12-byte signature, version/command, family/transport, a 16-bit length,
  the address block (12 bytes for IPv4, 36 for IPv6, 216 for UNIX) and TLVs.

A ``LOCAL`` command (v2: the load balancer's own health check), ``UNKNOWN`` (v1) or
an unspecified family carries no client: the connection's own addresses stay in
force (:attr:`ProxyHeader.source` is ``None``), as the specification requires.
Anything else malformed raises :class:`ProxyProtocolError`; a receiver must then
close the connection.

:func:`build_v2` writes a v2 header with TLVs (tgw's outgoing header, see
:data:`TLV_SPIFFE_ID`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
"""The longest v1 line, CRLF included (``PROXY UNKNOWN`` with two IPv6 addresses)."""
V2_HEADER = 16
MAX_HEADER = V2_HEADER + 0xFFFF

TLV_ALPN = 0x01
TLV_AUTHORITY = 0x02
TLV_NOOP = 0x04
TLV_UNIQUE_ID = 0x05
TLV_SPIFFE_ID = 0xE0
"""The caller's SPIFFE ID (UTF-8) in tgw's outgoing v2 header: the first type of the
range the specification reserves for custom use (``PP2_TYPE_MIN_CUSTOM``)."""

_FAMILIES = {0x1: (4, 12), 0x2: (16, 36), 0x3: (None, 216)}
"""v2 address family -> (IP address length or None for UNIX, address block length)."""


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int
    source: tuple[str, int] | None
    """The client's (address, port), or ``None``: keep the connection's own."""
    destination: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = field(default=())


def parse(data: bytes) -> tuple[ProxyHeader | None, int]:
    """``(header, bytes used)`` from the start of ``data``; ``(None, 0)`` while more bytes
    are needed. Raises :class:`ProxyProtocolError` for anything that is not a header."""
    if data[:1] == V2_SIGNATURE[:1]:
        if len(data) < len(V2_SIGNATURE):
            if not V2_SIGNATURE.startswith(data):
                raise ProxyProtocolError("not a PROXY protocol header")
            return None, 0
        if not data.startswith(V2_SIGNATURE):
            raise ProxyProtocolError("not a PROXY protocol header")
        return _parse_v2(data)
    if len(data) < len(V1_PREFIX):
        if not V1_PREFIX.startswith(data):
            raise ProxyProtocolError("not a PROXY protocol header")
        return None, 0
    if not data.startswith(V1_PREFIX):
        raise ProxyProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        return None, 0
    return _parse_v1(data[:end]), end + 2


def _port(text: bytes) -> int:
    # Ports are 1-5 ASCII digits without a sign or leading zeros (int() accepts more).
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError(f"invalid port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"invalid port {text!r}")
    return port


def _address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"invalid address {text!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"{text!r} is not an IPv{version} address")
    if version == 4 and text.decode() != str(address):
        raise ProxyProtocolError(f"invalid address {text!r}")  # leading zeros and such
    return str(address)


def _parse_v1(line: bytes) -> ProxyHeader:
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, None)
    if len(parts) != 6:
        raise ProxyProtocolError("v1 header needs: PROXY TCP4|TCP6 src dst sport dport")
    _, proto, src, dst, sport, dport = parts
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"unknown v1 protocol {proto!r}")
    version = 4 if proto == b"TCP4" else 6
    return ProxyHeader(
        1,
        (_address(src, version), _port(sport)),
        (_address(dst, version), _port(dport)),
    )


def _parse_v2(data: bytes) -> tuple[ProxyHeader | None, int]:
    if len(data) < V2_HEADER:
        return None, 0
    ver_cmd, fam, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"unsupported v2 version {ver_cmd >> 4}")
    command = ver_cmd & 0xF
    if command not in (0, 1):
        raise ProxyProtocolError(f"unknown v2 command {command}")
    total = V2_HEADER + length
    if len(data) < total:
        return None, 0
    block = data[V2_HEADER:total]
    family, transport = fam >> 4, fam & 0xF
    if family not in (0, *_FAMILIES) or transport > 2:
        raise ProxyProtocolError(f"unknown v2 family/transport 0x{fam:02x}")
    if command == 0 or family == 0:
        # LOCAL, or UNSPEC: no client address; the block is skipped as a whole.
        return ProxyHeader(2, None), total
    ip_len, block_len = _FAMILIES[family]
    if length < block_len:
        raise ProxyProtocolError(f"v2 address block of {length} bytes, needs {block_len}")
    tlvs = _tlvs(block[block_len:])
    if ip_len is None:  # AF_UNIX: a path, not an address we can log as a client
        return ProxyHeader(2, None, None, tlvs), total
    src = ipaddress.ip_address(block[:ip_len])
    dst = ipaddress.ip_address(block[ip_len : 2 * ip_len])
    sport, dport = struct.unpack("!HH", block[2 * ip_len : 2 * ip_len + 4])
    return ProxyHeader(2, (str(src), sport), (str(dst), dport), tlvs), total


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("truncated v2 TLV")
        kind, size = struct.unpack("!BH", data[offset : offset + 3])
        value = data[offset + 3 : offset + 3 + size]
        if len(value) != size:
            raise ProxyProtocolError(f"v2 TLV 0x{kind:02x} longer than the header")
        found.append((kind, value))
        offset += 3 + size
    return tuple(found)


def build_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 ``PROXY`` header over TCP (``LOCAL`` when ``source`` is ``None``)."""
    extra = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(extra)) + extra
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # e.g. an IPv4 client to an IPv6 upstream
        src = _mapped(src) if src.version == 4 else src
        dst = _mapped(dst) if dst.version == 4 else dst
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = block + extra
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def _mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(f"::ffff:{address}")
