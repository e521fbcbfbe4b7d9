"""The x-forwarded-client-cert element (Envoy's format) and its APPEND_FORWARD /
SANITIZE application; the subject is checked against the real ``openssl`` CLI."""

from __future__ import annotations

import datetime
import hashlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from gwcore.policy.xfcc import apply_xfcc, client_cert_element, rfc2253_subject, xfcc_element

CLIENT = "spiffe://td.consul/ns/default/dc/dc1/svc/web"
GATEWAY = "spiffe://td.consul/ns/default/dc/dc1/svc/tgw"


def _leaf(subject: x509.Name, uris=(CLIENT,), dns=()) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


SUBJECTS = [
    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]),
    x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Acme, "Inc"; <x>+y\\z'),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, " #lead "),
            x509.NameAttribute(NameOID.COMMON_NAME, "caf\u00e9 = ok"),
        ]
    ),
    x509.Name(
        [
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "consul"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.c"),
            x509.NameAttribute(ObjectIdentifier("1.2.3.4"), "other"),
        ]
    ),
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_subject_matches_openssl_rfc2253(subject, tmp_path):
    """The Subject is printed exactly as OpenSSL's XN_FLAG_RFC2253 (what Envoy uses)."""
    der = _leaf(subject)
    path = tmp_path / "leaf.der"
    path.write_bytes(der)
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-inform",
            "DER",
            "-in",
            str(path),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    assert out.startswith("subject=")
    assert rfc2253_subject(x509.load_der_x509_certificate(der).subject) == out[len("subject=") :]


def test_client_cert_element_fields():
    """By, Hash (sha256 of the leaf DER), quoted Subject, URI and each DNS SAN, in order."""
    der = _leaf(SUBJECTS[0], dns=("web.example", "alt.example"))
    element = client_cert_element(GATEWAY, der)
    assert element == (
        f'By={GATEWAY};Hash={hashlib.sha256(der).hexdigest()};Subject="CN=web";'
        f"URI={CLIENT};DNS=web.example;DNS=alt.example"
    )


def test_values_with_separators_are_quoted_and_escaped():
    """A value holding , ; = or a quote is quoted; quotes and backslashes are escaped."""
    element = xfcc_element("spiffe://a/b", "00", 'CN=x\\,y "q"', "spiffe://t/u;v")
    assert element == ('By=spiffe://a/b;Hash=00;Subject="CN=x\\\\,y \\"q\\"";URI="spiffe://t/u;v"')


def test_no_uri_san_leaves_uri_out():
    """A leaf without a URI SAN yields no URI pair (Envoy omits empty fields)."""
    element = client_cert_element(GATEWAY, _leaf(SUBJECTS[0], uris=()))
    assert "URI=" not in element and "DNS=" not in element


def test_append_forward_and_sanitize():
    """APPEND_FORWARD appends this hop's element after what the client sent;
    SanitizeXForwardedClientCert removes the header and adds nothing."""
    assert apply_xfcc([], "E", sanitize=False) == "E"
    assert apply_xfcc(["By=x;Hash=1", " By=y;Hash=2 "], "E", sanitize=False) == (
        "By=x;Hash=1,By=y;Hash=2,E"
    )
    assert apply_xfcc(["By=x;Hash=1"], "E", sanitize=True) is None
    assert apply_xfcc([], "E", sanitize=True) is None
