"""The ``x-forwarded-client-cert`` header toward an L7 upstream (sans-IO).

Envoy's format (``config/http/conn_man/headers`` docs, ``x-forwarded-client-cert``):
the header is a ``,``-separated list of elements, one per proxy hop; an element is a
``;``-separated list of ``Key=value`` pairs. A value holding ``,``, ``;``, ``=`` or
``"`` is double-quoted, and a ``"`` or ``\\`` inside quotes is backslash-escaped.
Envoy always quotes ``Subject``. The gateway's element is::

    By=<URI SAN of the certificate tgw presented>;Hash=<sha256 hex of the client leaf
    DER>;Subject="<client subject, RFC 2253>";URI=<client URI SAN>;DNS=<each DNS SAN>

``Subject`` is printed as OpenSSL's ``X509_NAME_print_ex(..., XN_FLAG_RFC2253)`` does
(what Envoy uses): RDNs in reverse order, short attribute names, ``,`` between RDNs,
``+`` inside one, and ``, + " \\ < > ;`` (plus a leading ``#``/space and a trailing
space) escaped with ``\\``, control and non-ASCII bytes as ``\\XX`` of their UTF-8.

Consul (``mesh`` config entry docs): ``HTTP.SanitizeXForwardedClientCert`` — "If
configured to true, the forward_client_cert_details option will be set to SANITIZE for
all Envoy proxies. By default, this is false and Envoy uses APPEND_FORWARD."
Envoy's ``SANITIZE``: do not send the XFCC header to the next hop (what the client
sent is removed, nothing is added); ``APPEND_FORWARD``: forward what the client sent
with this hop's element appended. :func:`apply_xfcc` implements both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = ["XFCC_HEADER", "apply_xfcc", "client_cert_element", "rfc2253_subject", "xfcc_element"]

XFCC_HEADER = "x-forwarded-client-cert"

# OpenSSL's short names (OBJ_nid2sn) for the attributes certificates carry; any other
# attribute is printed as its dotted OID with a #-hex DER value, as OpenSSL does.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.STREET_ADDRESS: "street",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
}
_ESCAPED = frozenset(',+"\\<>;')


def _escape_value(value: str) -> str:
    out: list[str] = []
    last = len(value) - 1
    for i, ch in enumerate(value):
        code = ord(ch)
        if code < 0x20 or code == 0x7F or code > 0x7E:
            out.append("".join(f"\\{b:02X}" for b in ch.encode("utf-8")))
        elif ch in _ESCAPED or (i == 0 and ch in "# ") or (i == last and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _value_der(attribute: x509.NameAttribute) -> bytes:
    """The DER of an attribute's value (OpenSSL's DUMP_UNKNOWN_FIELDS prints it as #hex)."""
    raw = attribute.value
    body = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    # cryptography keeps the ASN.1 string type it parsed (UTF8String when it built one).
    asn1_type = getattr(attribute, "_type", None)
    tag = int(getattr(asn1_type, "value", 0x0C))
    n = len(body)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def rfc2253_subject(name: x509.Name) -> str:
    """``name`` as OpenSSL prints it with ``XN_FLAG_RFC2253`` (see module docstring)."""
    rdns: list[str] = []
    for rdn in reversed(list(name.rdns)):
        parts = []
        for attribute in rdn:
            short = _SHORT_NAMES.get(attribute.oid)
            value = attribute.value
            if short is None or not isinstance(value, str):
                parts.append(
                    f"{attribute.oid.dotted_string}=#{_value_der(attribute).hex().upper()}"
                )
                continue
            parts.append(f"{short}={_escape_value(value)}")
        rdns.append("+".join(parts))
    return ",".join(rdns)


def _quote(value: str, *, always: bool = False) -> str:
    if always or any(ch in value for ch in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def xfcc_element(by: str, cert_hash: str, subject: str, uri: str, dns: Sequence[str] = ()) -> str:
    """One XFCC element from its parts (keys in Envoy's order, values quoted)."""
    pairs = [f"By={_quote(by)}", f"Hash={cert_hash}", f"Subject={_quote(subject, always=True)}"]
    if uri:
        pairs.append(f"URI={_quote(uri)}")
    pairs += [f"DNS={_quote(name)}" for name in dns]
    return ";".join(pairs)


def client_cert_element(by: str, client_leaf_der: bytes) -> str:
    """The gateway's XFCC element for a client presenting ``client_leaf_der``.

    ``by`` is the URI SAN (SPIFFE ID) of the certificate the gateway presented on that
    connection. ``URI`` is the client's first URI SAN (its SPIFFE ID; tgw admits only
    leaves with exactly one), ``DNS`` each DNS SAN in certificate order.
    """
    cert = x509.load_der_x509_certificate(client_leaf_der)
    uris: list[str] = []
    dns: list[str] = []
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        pass
    else:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    return xfcc_element(
        by,
        hashlib.sha256(client_leaf_der).hexdigest(),
        rfc2253_subject(cert.subject),
        uris[0] if uris else "",
        dns,
    )


def apply_xfcc(existing_values: Sequence[str], element: str, sanitize: bool) -> str | None:
    """The ``x-forwarded-client-cert`` value to send upstream, or ``None`` for none.

    ``existing_values`` are the values the client sent (each may already be a list).
    ``sanitize`` (``SanitizeXForwardedClientCert``) drops them and adds nothing;
    otherwise (APPEND_FORWARD) the element is appended after them with ``,``.
    """
    if sanitize:
        return None
    sent = [v.strip() for v in existing_values if v.strip()]
    return ",".join([*sent, element])
