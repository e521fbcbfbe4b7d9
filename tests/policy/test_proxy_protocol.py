"""The PROXY protocol parser and builder (gwcore.policy.proxy_protocol) against the
specification's examples and against Twisted's own parsers (a second implementation)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from gwcore.policy.proxy_protocol import (
    TLV_SPIFFE_ID,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_v2,
    parse,
)

V1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"


def test_v1_tcp4_and_tcp6_give_the_client_and_consume_exactly_the_line():
    """The spec's v1 example: the client is the first address/port; bytes after the
    CRLF (the TLS ClientHello) are not consumed."""
    header, used = parse(V1 + b"\x16\x03\x01")
    assert header == ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert used == len(V1)
    header, _ = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n")
    assert header is not None and header.source == ("2001:db8::1", 1)


def test_v1_unknown_keeps_the_connection_address():
    """``PROXY UNKNOWN``: the receiver ignores the rest and keeps the real addresses."""
    assert parse(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n")[0] == ProxyHeader(1, None)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a field missing
        b"PROXY TCP5 192.168.0.1 192.168.0.11 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",  # family mismatch
        b"PROXY TCP4 192.168.0.1 192.168.0.11 1 65536\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 2\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 01 2\r\n",
        b"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n",
        b"PROXY  TCP4 192.168.0.1 192.168.0.11 1 2\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello without any header
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8),
    ],
)
def test_malformed_headers_are_refused(line):
    """Anything that is not exactly a header is an error (the connection is closed)."""
    with pytest.raises(ProxyProtocolError):
        parse(line)


def test_v1_without_crlf_within_107_bytes_is_refused():
    """A v1 line is at most 107 bytes; a longer one never completes."""
    assert parse(b"PROXY TCP4 1.2.3.4")[0] is None  # still incomplete
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(b"PROXY TCP6 " + b"1" * 120)


def test_v2_local_command_keeps_the_connection_address():
    """LOCAL (the load balancer's health check): no client, whatever the block says."""
    local = V2_SIGNATURE + bytes([0x20, 0x11]) + struct.pack("!H", 12) + bytes(12)
    assert parse(local + b"rest") == (ProxyHeader(2, None), len(local))


def test_v2_with_tlvs_and_incomplete_prefixes():
    """A v2 header is complete only with its whole length; every prefix asks for more."""
    data = build_v2(("10.1.2.3", 5555), ("10.0.0.1", 8443), ((TLV_SPIFFE_ID, b"spiffe://td/ns/a"),))
    for cut in range(len(data)):
        assert parse(data[:cut]) == (None, 0)
    header, used = parse(data + b"\x16")
    assert used == len(data)
    assert header == ProxyHeader(
        2, ("10.1.2.3", 5555), ("10.0.0.1", 8443), ((TLV_SPIFFE_ID, b"spiffe://td/ns/a"),)
    )


@pytest.mark.parametrize(
    "data",
    [
        V2_SIGNATURE + bytes([0x31, 0x11]) + struct.pack("!H", 12) + bytes(12),  # version 3
        V2_SIGNATURE + bytes([0x22, 0x11]) + struct.pack("!H", 12) + bytes(12),  # command 2
        V2_SIGNATURE + bytes([0x21, 0x41]) + struct.pack("!H", 12) + bytes(12),  # family 4
        V2_SIGNATURE + bytes([0x21, 0x21]) + struct.pack("!H", 12) + bytes(12),  # v6, 12 bytes
        V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 14) + bytes(14),  # bad TLV
    ],
)
def test_malformed_v2_is_refused(data):
    with pytest.raises(ProxyProtocolError):
        parse(data)


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_v2_agrees_with_twisted(addresses, sport, dport):
    """Every header we build, Twisted's v2 parser reads as the same client; so do we."""
    src, dst = addresses
    data = build_v2((src, sport), (dst, dport))
    theirs = V2Parser.parse(data)
    ours, used = parse(data)
    assert used == len(data) and ours is not None
    assert ours.source == (str(ipaddress.ip_address(theirs.source.host)), theirs.source.port)
    assert ours.source == (str(ipaddress.ip_address(src)), sport)


@given(st.one_of(st.tuples(st.just("TCP4"), ipv4, ipv4), st.tuples(st.just("TCP6"), ipv6, ipv6)),
       ports, ports)  # fmt: skip
def test_v1_agrees_with_twisted(family_addresses, sport, dport):
    """A v1 line with any addresses and ports: our client is Twisted's client."""
    family, src, dst = family_addresses
    line = f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()
    theirs = V1Parser.parse(line[:-2])
    ours, used = parse(line)
    assert used == len(line) and ours is not None
    assert ours.source == (theirs.source.host, theirs.source.port)
