"""Hop-by-hop fields (RFC 9110 §7.6.1) and HTTP/1.1 <-> HTTP/2 header conversion
(RFC 9113 §8.2.2, §8.3.1)."""

from __future__ import annotations

import pytest

from gwcore.policy.http_headers import (
    MalformedHeaders,
    check_h2_fields,
    h1_to_h2_request,
    h2_to_h1_request,
    strip_hop_by_hop,
)


def test_strip_removes_listed_and_connection_named_fields():
    """Connection, the fields it names and the fixed hop-by-hop list are removed;
    everything else keeps its order and case."""
    headers = [
        ("Host", "h"),
        ("Connection", "keep-alive, X-Secret"),
        ("X-Secret", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "close"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("X-Kept", "2"),
    ]
    assert strip_hop_by_hop(headers) == [("Host", "h"), ("X-Kept", "2")]


def test_te_trailers_kept_only_toward_http2():
    """TE: trailers survives toward HTTP/2 (RFC 9113 allows it, gRPC needs it); other
    TE values never do; ``Connection: te`` (which RFC 9110 §10.1.4 requires of a TE
    sender) does not cancel the exception."""
    assert strip_hop_by_hop([("te", "trailers")], to_http2=True) == [("te", "trailers")]
    assert strip_hop_by_hop([("te", "gzip")], to_http2=True) == []
    assert strip_hop_by_hop([("te", "trailers")], to_http2=False) == []
    named = [("connection", "te"), ("te", "trailers")]
    assert strip_hop_by_hop(named, to_http2=True) == [("te", "trailers")]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("Content-Type", "x")], "uppercase_field_name"),
        ([("connection", "close")], "connection_specific_field"),
        ([("keep-alive", "1")], "connection_specific_field"),
        ([("transfer-encoding", "chunked")], "connection_specific_field"),
        ([("upgrade", "h2c")], "connection_specific_field"),
        ([("proxy-connection", "x")], "connection_specific_field"),
        ([("te", "gzip")], "te_not_trailers"),
    ],
)
def test_h2_connection_specific_fields_are_malformed(headers, reason):
    """RFC 9113 §8.2.2: such a block is malformed, with a metric-safe reason."""
    with pytest.raises(MalformedHeaders) as info:
        check_h2_fields(headers)
    assert info.value.reason == reason


def test_h2_te_trailers_is_allowed():
    check_h2_fields([("te", "trailers"), ("content-type", "application/grpc")])


def test_h1_to_h2_request():
    """Pseudo-headers first, Host becomes :authority, names lower-cased, hop-by-hop gone."""
    block = h1_to_h2_request(
        "POST",
        "/pkg.Svc/Call",
        [
            ("Host", "api:8080"),
            ("Content-Type", "application/grpc"),
            ("TE", "trailers"),
            ("Connection", "keep-alive"),
        ],
        scheme="http",
    )
    assert block == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/pkg.Svc/Call"),
        (":authority", "api:8080"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def test_h2_to_h1_request():
    """:authority becomes Host, cookie crumbs are joined, TE and pseudo-headers dropped."""
    req = h2_to_h1_request(
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/a?b"),
            (":authority", "svc"),
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("te", "trailers"),
        ]
    )
    assert (req.method, req.target) == ("GET", "/a?b")
    assert req.headers == (("host", "svc"), ("accept", "*/*"), ("cookie", "a=1; b=2"))


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (
            [(":method", "GET"), (":path", "/"), (":authority", "a"), ("host", "b")],
            "host_authority_mismatch",
        ),
        ([(":method", "GET")], "missing_pseudo_header"),
        ([(":method", "GET"), ("accept", "x"), (":path", "/")], "pseudo_header_after_field"),
        ([(":method", "GET"), (":path", "/"), (":path", "/x")], "bad_pseudo_header"),
        ([(":method", "GET"), (":path", "/"), (":status", "200")], "bad_pseudo_header"),
        ([(":method", "GET"), (":path", "/"), ("connection", "x")], "connection_specific_field"),
    ],
)
def test_h2_to_h1_refuses_malformed_blocks(block, reason):
    with pytest.raises(MalformedHeaders) as info:
        h2_to_h1_request(block)
    assert info.value.reason == reason
