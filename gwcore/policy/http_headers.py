"""Hop-by-hop header rules and HTTP/1.1 <-> HTTP/2 header conversion (sans-IO).

Rules:

1. RFC 9110 §7.6.1: a proxy removes ``Connection``, every field ``Connection`` names,
   and ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Transfer-Encoding`` and
   ``Upgrade`` before forwarding. The one exception: ``TE: trailers`` is forwarded
   toward an HTTP/2 upstream (RFC 9113 §8.2.2 allows exactly that value, and gRPC
   servers require it).
2. RFC 9113 §8.2.2: an HTTP/2 message carrying a connection-specific field (the list
   above, ``TE`` other than ``trailers``) or an upper-case field name is malformed
   (:class:`MalformedHeaders`, a short metric-safe reason).
3. HTTP/1.1 -> HTTP/2: names lower-cased, ``Host`` becomes ``:authority`` (RFC 9113
   §8.3.1), pseudo-headers first. HTTP/2 -> HTTP/1.1: ``:authority`` becomes ``Host``
   (a ``Host`` that differs from ``:authority`` is malformed), pseudo-headers are
   removed. Cookie crumbs (RFC 9113 §8.2.3) are joined with ``"; "`` toward HTTP/1.1.

Headers are ``(name, value)`` tuples of ``str`` in message order; outputs keep that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "HOP_BY_HOP",
    "H1Request",
    "MalformedHeaders",
    "check_h2_fields",
    "h1_to_h2_request",
    "h2_to_h1_request",
    "strip_hop_by_hop",
]

Header = tuple[str, str]

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
)
"""The fields RFC 9110 §7.6.1 names as connection-specific (lower-case)."""


class MalformedHeaders(ValueError):  # noqa: N818 - reads as the condition, like h2's errors
    """A header block an HTTP/2 peer may not send; ``reason`` is a short metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _connection_tokens(headers: Iterable[Header]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _is_te_trailers(value: str) -> bool:
    return value.strip().lower() == "trailers"


def strip_hop_by_hop(headers: Iterable[Header], *, to_http2: bool = False) -> list[Header]:
    """The headers a proxy forwards: rule 1 applied (names keep their case)."""
    items = list(headers)
    drop = HOP_BY_HOP | _connection_tokens(items)
    kept: list[Header] = []
    for name, value in items:
        lower = name.lower()
        # RFC 9110 §10.1.4 makes a TE sender also list "te" in Connection, so that
        # listing does not cancel the exception.
        if (lower == "te" and to_http2 and _is_te_trailers(value)) or lower not in drop:
            kept.append((name, value))
    return kept


def check_h2_fields(headers: Iterable[Header]) -> None:
    """Raise :class:`MalformedHeaders` if an HTTP/2 header block breaks rule 2."""
    for name, value in headers:
        if name != name.lower():
            raise MalformedHeaders("uppercase_field_name")
        if name == "te":
            if not _is_te_trailers(value):
                raise MalformedHeaders("te_not_trailers")
        elif name in HOP_BY_HOP:
            raise MalformedHeaders("connection_specific_field")


@dataclass(frozen=True, slots=True)
class H1Request:
    """An HTTP/1.1 request line and header block (what an h11 ``Request`` needs)."""

    method: str
    target: str
    headers: tuple[Header, ...]


def h1_to_h2_request(
    method: str, target: str, headers: Iterable[Header], *, scheme: str
) -> list[Header]:
    """The HTTP/2 header block (pseudo-headers first) for an HTTP/1.1 request.

    Hop-by-hop fields are removed (``TE: trailers`` kept); ``Host`` becomes
    ``:authority``. ``CONNECT`` has neither ``:scheme`` nor ``:path`` (RFC 9113 §8.5).
    """
    forwarded = strip_hop_by_hop(headers, to_http2=True)
    authority = ""
    rest: list[Header] = []
    for name, value in forwarded:
        lower = name.lower()
        if lower == "host":
            authority = authority or value
            continue
        rest.append((lower, value))
    block: list[Header] = [(":method", method)]
    if method != "CONNECT":
        block += [(":scheme", scheme), (":path", target)]
    if authority:
        block.append((":authority", authority))
    return block + rest


def h2_to_h1_request(headers: Iterable[Header]) -> H1Request:
    """The HTTP/1.1 request for an HTTP/2 header block (rules 2 and 3).

    Raises :class:`MalformedHeaders` for a block HTTP/2 forbids, a missing
    ``:method``/``:path`` or a ``Host`` differing from ``:authority``.
    """
    items = list(headers)
    check_h2_fields((n, v) for n, v in items if not n.startswith(":"))
    pseudo: dict[str, str] = {}
    fields: list[Header] = []
    cookies: list[str] = []
    host: str | None = None
    for name, value in items:
        if name.startswith(":"):
            if fields or cookies or host is not None:
                raise MalformedHeaders("pseudo_header_after_field")
            if name in pseudo or name not in (":method", ":scheme", ":path", ":authority"):
                raise MalformedHeaders("bad_pseudo_header")
            pseudo[name] = value
        elif name == "host":
            host = value
        elif name == "cookie":
            cookies.append(value)
        elif name != "te":
            fields.append((name, value))
    method, path = pseudo.get(":method"), pseudo.get(":path")
    if not method or (method != "CONNECT" and not path):
        raise MalformedHeaders("missing_pseudo_header")
    authority = pseudo.get(":authority")
    if authority is not None and host is not None and host != authority:
        raise MalformedHeaders("host_authority_mismatch")
    out: list[Header] = []
    if authority is not None or host is not None:
        out.append(("host", authority if authority is not None else host or ""))
    out += fields
    if cookies:
        out.append(("cookie", "; ".join(cookies)))
    return H1Request(method, path or authority or "", tuple(out))
