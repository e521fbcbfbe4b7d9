"""The L7 policy rules as the exchange applies them (the rules live in ``gwcore/policy``).

Path normalisation and the underscore action are :mod:`gwcore.policy.http_path`, the
hop-by-hop set :mod:`gwcore.policy.http_headers`, the ``x-forwarded-client-cert``
element :mod:`gwcore.policy.xfcc`. This module adds what needs the connection: the
identity the gateway presented (``By``) and the client's leaf, read once per
connection.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from OpenSSL import crypto

from gwcore.contract.http_flow import Headers
from gwcore.net.connection_facts import peer_certificate_der
from gwcore.net.h11_trusted import ValidFields, known_valid, valid_field_value
from gwcore.policy.http_facts import PathNormalization
from gwcore.policy.http_headers import HOP_BY_HOP
from gwcore.policy.http_path import (
    PathRejected,
    RedirectPath,
    headers_with_underscores,
    normalize_path,
)
from gwcore.policy.xfcc import XFCC_HEADER, apply_xfcc, client_cert_element
from gwcore.policy.xfcc_input import forwardable_xfcc

__all__ = [
    "PathMemo",
    "PathRejected",
    "RedirectPath",
    "gateway_headers",
    "headers_with_underscores",
    "hop_by_hop",
    "normalize_path",
    "request_id",
    "with_request_id",
    "without_hop_by_hop",
    "xfcc_element_of",
]


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Lower-case names of a message's hop-by-hop fields: the fixed set and every name
    its ``Connection`` field lists (RFC 9110 §7.6.1)."""
    listed: list[str] = []
    for name, value in headers:
        if name.lower() == "connection":
            listed += [t.strip().lower() for t in value.split(",") if t.strip()]
    return HOP_BY_HOP.union(listed) if listed else HOP_BY_HOP


def without_hop_by_hop(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``fields`` without the :func:`hop_by_hop` ones, in order (a new list). Most
    messages have no ``Connection`` field: the fixed set is then all there is to drop,
    and each name is lower-cased once."""
    names = [name.lower() for name, _ in fields]
    drop = HOP_BY_HOP
    if "connection" in names:
        listed = [
            token.strip().lower()
            for (_, value), name in zip(fields, names, strict=True)
            if name == "connection"
            for token in value.split(",")
            if token.strip()
        ]
        drop = HOP_BY_HOP.union(listed)
    return [field for field, name in zip(fields, names, strict=True) if name not in drop]


class PathMemo:
    """:func:`normalize_path` of recent request targets under one set of options.

    Normalisation is a pure function of the target, the options and (for ``*``) the
    method, and a connection asks for the same few paths again and again: a result is
    kept, for short targets only, and all of them are dropped when the options change
    (a new ``mesh`` entry) or when :data:`MAX_ENTRIES` are held. A refused target is
    not kept (it is refused again, and counted, each time)."""

    MAX_ENTRIES = 1024
    MAX_TARGET = 256  # bytes of a target kept: at most MAX_ENTRIES * MAX_TARGET held

    __slots__ = ("_options", "_paths")

    def __init__(self) -> None:
        self._options: PathNormalization | None = None
        self._paths: dict[tuple[str, str], str] = {}

    def normalize(self, target: str, options: PathNormalization, method: str) -> str:
        if options is not self._options:
            self._options = options
            self._paths = {}
        key = (target, method)
        path = self._paths.get(key)
        if path is None:
            path = normalize_path(target, options, method=method)  # may raise PathRejected
            if len(target) <= self.MAX_TARGET:
                if len(self._paths) >= self.MAX_ENTRIES:
                    self._paths.clear()
                self._paths[key] = path
        return path


def xfcc_element_of(conn: Any) -> str:
    """The gateway's XFCC element for ``conn`` (cached on it: one parse per connection)."""
    cached = getattr(conn, "l7_xfcc_element", None)
    if cached is not None:
        return cached
    tls = getattr(conn, "tls", None)
    by = ""
    own = tls.get_certificate() if tls is not None else None
    if own is not None:
        try:
            san = own.to_cryptography().extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME
            )
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
            by = uris[0] if uris else ""
        except x509.ExtensionNotFound:
            pass
    chain = tls.get_peer_cert_chain() if tls is not None else None
    chain_der = [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain or ()]
    element = client_cert_element(by, peer_certificate_der(tls), chain_der)
    conn.l7_xfcc_element = element
    return element


def gateway_headers(headers: Headers, conn: Any, sanitize_xfcc: bool) -> tuple[Headers, str | None]:
    """The request's fields as the service gets them, built *before* authorization
    (Envoy's connection manager mutates the request before its RBAC and ext_authz
    filters run), and the ``x-forwarded-client-cert`` value (``None``: none).

    Hop-by-hop fields removed (RFC 9110 §7.6.1); ``x-forwarded-client-cert`` appended
    to (APPEND_FORWARD) or dropped (``SanitizeXForwardedClientCert``);
    ``x-forwarded-proto: https`` when the client sent none (the mesh leg is TLS). The
    ``x-request-id`` Envoy generates is added after the decision (:func:`with_request_id`).
    One pass over the fields: this runs for every request.
    """
    out: list[tuple[str, str]] = []
    sent: list[str] = []
    has_proto = False
    for name, value in without_hop_by_hop(headers.items()):
        lower = name.lower()
        if lower == XFCC_HEADER:
            sent.append(value)
            continue
        if lower == "x-forwarded-proto":
            has_proto = True
        out.append((name, value))
    # A client value that is not Envoy's grammar is dropped (gwcore.policy.xfcc_input).
    element = xfcc_element_of(conn)
    xfcc = apply_xfcc(forwardable_xfcc(sent) if sent else sent, element, sanitize_xfcc)
    if xfcc is not None:
        out.append((XFCC_HEADER, xfcc))
    if not has_proto:
        out.append(("x-forwarded-proto", "https"))
    # Known valid (gwcore.net.h11_trusted) if the client's fields were and the XFCC
    # value is none or the element alone, checked once per connection; a client's
    # XFCC value forwarded with it is checked with the rest, per request, as before.
    if known_valid(headers) and (xfcc is None or (xfcc == element and _element_valid(conn))):
        return ValidFields.adopt(out), xfcc
    return Headers.adopt(out), xfcc


def _element_valid(conn: Any) -> bool:
    """Whether the connection's XFCC element is a valid field value (one check by h11's
    validating constructor per connection; a certificate's DNS SAN may hold anything)."""
    valid = getattr(conn, "l7_xfcc_valid", None)
    if valid is None:
        valid = conn.l7_xfcc_valid = valid_field_value(xfcc_element_of(conn))
    return valid


def request_id() -> str:
    """A random UUID4 in its text form, as Envoy's ``generate_request_id`` makes one.

    A request id names a request in logs; it is no secret, so it comes from the
    interpreter's generator (reseeded in a forked child) rather than ``uuid.uuid4()``,
    which costs a ``getrandom`` system call and a ``UUID`` object per request."""
    n = (random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# RFC 9562 §5.4: version 4 in bits 48-51 (from the most significant), variant 10 in
# bits 64-65.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def with_request_id(headers: Headers) -> Headers:
    """``headers`` with an ``x-request-id`` (a UUID4) when the client sent none, as
    Envoy's ``generate_request_id`` (on in Consul's listeners) does. Added after the
    decision, not before as in Envoy: a fresh id in every input would make identical
    requests distinct for the OPA decision cache; a client's own id is decided on."""
    if headers.get("x-request-id") is None:
        headers.add("x-request-id", request_id())
    return headers
