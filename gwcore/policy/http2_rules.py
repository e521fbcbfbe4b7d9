"""HTTP/2 and gRPC rules of the L7 path that need no I/O (sans-IO).

- :func:`preface_state`: whether a cleartext byte stream opens with the HTTP/2
  client connection preface (RFC 9113 §3.4, "prior knowledge").
- :func:`grpc_denial`: the trailers-only response Envoy's RBAC filter gives a gRPC
  request it denies (``grpc-status`` 7, PERMISSION_DENIED).
- :func:`request_facts`: the :class:`~gwcore.policy.http_facts.HttpRequestFacts` of
  an HTTP/2 request head, or why the head is refused (a stream reset, RFC 9113 §8.1.1).
"""

from __future__ import annotations

from gwcore.policy.http_facts import HttpRequestFacts

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The HTTP/2 client connection preface (RFC 9113 §3.4)."""

GRPC_PERMISSION_DENIED = 7
DENIAL_MESSAGE = "RBAC: access denied"

_PSEUDO_REQUEST = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})

Headers = list[tuple[bytes, bytes]]


def preface_state(data: bytes) -> bool | None:
    """True when ``data`` starts with the preface, False when it cannot, None when
    too short to tell yet (the caller reads more, at most ``len(PREFACE)`` bytes)."""
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return False
    return True if n == len(PREFACE) else None


def is_grpc(headers: Headers) -> bool:
    """A gRPC request: ``content-type`` is ``application/grpc`` or ``application/grpc+…``
    (the gRPC over HTTP/2 spec; ``application/grpc-web`` is not gRPC on the wire)."""
    for name, value in headers:
        if name == b"content-type":
            v = value.lower()
            return v == b"application/grpc" or v.startswith(
                (b"application/grpc+", b"application/grpc;")
            )
    return False


def grpc_denial(message: str = DENIAL_MESSAGE) -> Headers:
    """The one HEADERS frame (with END_STREAM) that answers a denied gRPC call."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(GRPC_PERMISSION_DENIED).encode()),
        (b"grpc-message", _percent_encode(message).encode("ascii")),
    ]


# HTTP status of a local reply → gRPC status, as Envoy's Grpc::Utility::httpToGrpcStatus
# and gRPC's doc/http-grpc-status-mapping.md.
_GRPC_STATUS_BY_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def grpc_status_for(http_status: int) -> int:
    """The ``grpc-status`` a gRPC client gets for a local reply with this HTTP status."""
    return _GRPC_STATUS_BY_HTTP.get(http_status, GRPC_UNKNOWN)


def grpc_local_reply(http_status: int, message: str) -> Headers:
    """A local reply (403, 503, 400 ...) to a gRPC request, as one trailers-only HEADERS
    frame: what Envoy sends instead of an HTTP error a gRPC client could not read."""
    head = grpc_denial(message.strip())
    head[2] = (b"grpc-status", str(grpc_status_for(http_status)).encode())
    return head


def _percent_encode(message: str) -> str:
    # grpc-message is percent-encoded UTF-8 outside printable ASCII minus '%'.
    out = []
    for byte in message.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 0x20 <= byte <= 0x7E and ch != "%" else f"%{byte:02X}")
    return "".join(out)


def request_facts(headers: Headers) -> HttpRequestFacts | str:
    """The facts of an HTTP/2 request head, or the reason it is refused.

    ``h2`` already validates the pseudo-header rules it knows (RFC 9113 §8.3); this
    adds what a proxy needs: one ``:method``, ``:path`` and ``:scheme`` (no CONNECT
    tunnels through an L7 destination), and an authority.
    """
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[str, str]] = []
    for name, value in headers:
        if name.startswith(b":"):
            if name not in _PSEUDO_REQUEST or name in pseudo:
                return "bad_pseudo_header"
            pseudo[name] = value
        else:
            fields.append((name.decode("latin-1").lower(), value.decode("latin-1")))
    method = pseudo.get(b":method", b"")
    if method == b"CONNECT" or b":protocol" in pseudo:
        return "connect_refused"
    path = pseudo.get(b":path", b"")
    if not method or not path or b":scheme" not in pseudo:
        return "missing_pseudo_header"
    authority = pseudo.get(b":authority", b"")
    if not authority:
        hosts = [v for k, v in fields if k == "host"]
        authority = hosts[0].encode("latin-1") if hosts else b""
    text_path = path.decode("latin-1")
    return HttpRequestFacts(
        method=method.decode("latin-1"),
        path=text_path,
        authority=authority.decode("latin-1"),
        scheme=pseudo[b":scheme"].decode("latin-1"),
        protocol="HTTP/2",
        headers=tuple(fields),
        original_path=text_path,
    )
