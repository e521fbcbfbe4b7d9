"""What an authorization engine may read about one established downstream TLS connection.

Asked once per authorization, after the handshake: the connection's local address
(the address the client reached, not the wildcard a listener is bound to, as Envoy's
``destination.address``), the server name exactly as the client sent it, and the
client's leaf certificate (DER), as Envoy's network ``ext_authz`` check reports them.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import crypto


def local_address(transport: Any) -> tuple[str, int]:
    """``(host, port)`` of the connection's own end (``("", 0)`` if unknown)."""
    try:
        host = transport.getHost()
    except Exception:  # a transport without a socket (tests' fakes), or one being closed
        return "", 0
    return getattr(host, "host", ""), getattr(host, "port", 0)


def requested_server_name(tls: Any) -> str:
    """The SNI as sent (decoded as OpenSSL received it), or ``""``."""
    raw = tls.get_servername() if tls is not None else None
    return raw.decode("ascii", "replace") if raw else ""


def peer_certificate_der(tls: Any) -> bytes:
    """The client's leaf certificate, DER, or ``b""``."""
    cert = tls.get_peer_certificate() if tls is not None else None
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) if cert is not None else b""
