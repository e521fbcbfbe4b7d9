"""The sans-IO HTTP/2 and gRPC rules of the L7 path (gwcore.policy.http2_rules)."""

from __future__ import annotations

import pytest

from gwcore.policy import http2_rules
from gwcore.policy.http2_rules import PREFACE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (PREFACE[:10], None),
        (PREFACE, True),
        (PREFACE + b"\x00\x00", True),
        (b"GET / HTTP/1.1\r\n", False),
        (b"PRI * HTTP/1.1", False),
    ],
)
def test_preface_state_tells_prior_knowledge_from_http1(data: bytes, expected: bool | None):
    """Only the whole RFC 9113 preface means HTTP/2; a prefix means "read more"."""
    assert http2_rules.preface_state(data) is expected


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"Application/GRPC", True),
        (b"application/grpc-web", False),
        (b"application/json", False),
    ],
)
def test_is_grpc_by_content_type(content_type: bytes, grpc: bool):
    """gRPC over HTTP/2 is ``application/grpc`` or ``application/grpc+<codec>``."""
    assert http2_rules.is_grpc([(b"content-type", content_type)]) is grpc


def test_grpc_denial_is_envoys_rbac_answer():
    """A denied gRPC call: :status 200, application/grpc, grpc-status 7 and Envoy's
    RBAC message, in one header block."""
    assert http2_rules.grpc_denial() == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"7"),
        (b"grpc-message", b"RBAC: access denied"),
    ]


@pytest.mark.parametrize(
    ("status", "grpc_status"),
    [(403, b"7"), (503, b"14"), (504, b"14"), (400, b"13"), (404, b"12"), (500, b"2")],
)
def test_local_replies_map_http_status_to_grpc_status(status: int, grpc_status: bytes):
    """Envoy's httpToGrpcStatus: a local 503 reaches a gRPC client as UNAVAILABLE etc.;
    the message is percent-encoded outside printable ASCII."""
    head = http2_rules.grpc_local_reply(status, "no 100% héalthy\n")
    assert dict(head)[b"grpc-status"] == grpc_status
    assert dict(head)[b"grpc-message"] == b"no 100%25 h%C3%A9althy"


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        ([(b":method", b"CONNECT"), (b":authority", b"x:1")], "connect_refused"),
        (
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")],
            "missing_pseudo_header",
        ),
        (
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"h"), (b":bogus", b"1")],
            "bad_pseudo_header",
        ),
        (
            [(b":method", b"GET"), (b":method", b"PUT"), (b":path", b"/"), (b":scheme", b"h")],
            "bad_pseudo_header",
        ),
    ],
)
def test_request_facts_refuses_heads_a_proxy_cannot_forward(head, reason):
    assert http2_rules.request_facts(head) == reason


def test_request_facts_reads_pseudo_headers_and_lowercases_fields():
    """Pseudo-headers become method/path/authority/scheme; fields keep order; the
    authority falls back to ``host`` when ``:authority`` is absent."""
    facts = http2_rules.request_facts(
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/a?b=1"),
            (b"host", b"svc.example"),
            (b"x-one", b"1"),
            (b"x-one", b"2"),
        ]
    )
    assert not isinstance(facts, str)
    assert (facts.method, facts.path, facts.authority, facts.protocol) == (
        "POST",
        "/a?b=1",
        "svc.example",
        "HTTP/2",
    )
    assert facts.header_values("x-one") == ["1", "2"]
