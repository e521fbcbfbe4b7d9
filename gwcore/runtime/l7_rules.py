"""The L7 policy rules as the exchange applies them (the rules live in ``gwcore/policy``).

Path normalisation and the underscore action are :mod:`gwcore.policy.http_path`, the
hop-by-hop set :mod:`gwcore.policy.http_headers`, the ``x-forwarded-client-cert``
element :mod:`gwcore.policy.xfcc`. This module adds what needs the connection: the
identity the gateway presented (``By``) and the client's leaf, read once per
connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from gwcore.net.connection_facts import peer_certificate_der
from gwcore.policy.http_headers import HOP_BY_HOP
from gwcore.policy.http_path import (
    PathRejected,
    RedirectPath,
    headers_with_underscores,
    normalize_path,
)
from gwcore.policy.xfcc import client_cert_element

__all__ = [
    "PathRejected",
    "RedirectPath",
    "headers_with_underscores",
    "hop_by_hop",
    "normalize_path",
    "xfcc_element_of",
]


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Lower-case names of a message's hop-by-hop fields: the fixed set and every name
    its ``Connection`` field lists (RFC 9110 §7.6.1)."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


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
    element = client_cert_element(by, peer_certificate_der(tls))
    conn.l7_xfcc_element = element
    return element
