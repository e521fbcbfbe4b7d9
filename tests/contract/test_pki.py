"""Tests for gwcore.contract.pki: the CA and leaf certificates every other part of tgw relies on."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.contract import pki
from gwcore.contract.providers import LeafCertificate
from gwcore.policy.model import ServiceName, SpiffeID

TD = "11111111-2222-3333-4444-555555555555.consul"
NOW = 1_800_000_000.0  # a fixed instant (2027), so validity windows are exact


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return pki.new_ca(TD, now=NOW)


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


def _at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def _client_verifier(roots: list[x509.Certificate], when: float) -> verification.ClientVerifier:
    return (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(_at(when))
        .build_client_verifier()
    )


# --- the CA ----------------------------------------------------------------------


def test_ca_is_a_self_signed_p256_root_with_ca_extensions(ca) -> None:
    cert, key = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tgw built-in CA"
    cert.verify_directly_issued_by(cert)
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def test_ca_carries_the_trust_domain_as_a_spiffe_uri_san(ca) -> None:
    cert, _ = ca
    assert pki.uri_sans(cert) == [f"spiffe://{TD}"]
    assert pki.trust_domain_of(cert) == TD


def test_ca_validity_starts_a_minute_early_and_lasts_valid_for() -> None:
    cert, _ = pki.new_ca("example.consul", now=NOW, valid_for=3600)
    assert cert.not_valid_before_utc == _at(NOW - 60)
    assert cert.not_valid_after_utc == _at(NOW + 3600)


def test_ca_uses_the_given_key_and_common_name() -> None:
    key = pki.new_key()
    cert, returned = pki.new_ca("example.consul", key=key, common_name="Consul CA Primary Cert")
    assert returned is key
    assert pki.key_pem(key) == pki.key_pem(returned)
    assert cert.subject.rfc4514_string() == "CN=Consul CA Primary Cert"


def test_two_cas_differ_in_key_and_serial() -> None:
    a, _ = pki.new_ca("example.consul")
    b, _ = pki.new_ca("example.consul")
    assert a.serial_number != b.serial_number
    assert pki.fingerprint_hex(a) != pki.fingerprint_hex(b)


def test_fingerprint_is_colon_hex_sha1_like_consul_root_ids(ca) -> None:
    cert, _ = ca
    fp = pki.fingerprint_hex(cert)
    assert fp == ":".join(f"{b:02x}" for b in cert.fingerprint(hashes.SHA1()))
    assert len(fp.split(":")) == 20


# --- leaves ----------------------------------------------------------------------


def test_leaf_has_mesh_leaf_extensions(ca) -> None:
    cert, key = ca
    uri = f"spiffe://{TD}/ns/default/dc/dc1/svc/billing"
    leaf = pki.issue_leaf(cert, key, uri, now=NOW)
    c = leaf.certificate
    assert leaf.chain == (c,)
    assert c.issuer == cert.subject
    bc = _ext(c, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(c, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = _ext(c, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = _ext(c, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert pki.uri_sans(c) == [uri]
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    assert c.serial_number > 0


def test_leaf_signature_verifies_with_the_ca_public_key(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, f"spiffe://{TD}/ns/default/dc/dc1/svc/web", now=NOW)
    leaf.certificate.verify_directly_issued_by(cert)
    other, _ = pki.new_ca(TD)
    with pytest.raises(InvalidSignature):
        leaf.certificate.verify_directly_issued_by(other)


def test_leaf_chain_validates_as_a_client_certificate_against_the_root(ca) -> None:
    cert, key = ca
    uri = f"spiffe://{TD}/ns/default/dc/dc1/svc/web"
    leaf = pki.issue_leaf(cert, key, uri, now=NOW)
    verified = _client_verifier([cert], NOW).verify(leaf.certificate, [])
    assert x509.UniformResourceIdentifier(uri) in verified.subjects
    with pytest.raises(verification.VerificationError):
        _client_verifier([pki.new_ca(TD)[0]], NOW).verify(leaf.certificate, [])


def test_leaf_with_dns_name_validates_as_a_server_certificate(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(
        cert, key, f"spiffe://{TD}/ns/default/dc/dc1/svc/db", dns_names=["db.example"], now=NOW
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([cert]))
        .time(_at(NOW))
        .build_server_verifier(verification.DNSName("db.example"))
    )
    assert verifier.verify(leaf.certificate, [])[0] == leaf.certificate
    assert leaf.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["db.example"]


def test_leaf_validity_window_is_skewed_back_and_lasts_valid_for(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", now=NOW, valid_for=7200)
    assert leaf.certificate.not_valid_before_utc == _at(NOW - 60)
    assert leaf.certificate.not_valid_after_utc == _at(NOW + 7200)
    assert leaf.not_after == NOW + 7200
    leaf = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", now=NOW, not_before_skew=0)
    assert leaf.certificate.not_valid_before_utc == _at(NOW)
    assert leaf.not_after == NOW + 72 * 3600


def test_leaf_never_outlives_its_ca() -> None:
    cert, key = pki.new_ca("example.consul", now=NOW, valid_for=600)
    leaf = pki.issue_leaf(cert, key, "spiffe://example.consul/ns/a/dc/b/svc/c", now=NOW)
    assert leaf.certificate.not_valid_after_utc == cert.not_valid_after_utc


def test_leaf_is_expired_outside_its_window_for_a_verifier(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, f"spiffe://{TD}/ns/a/dc/b/svc/c", now=NOW, valid_for=600)
    _client_verifier([cert], NOW + 599).verify(leaf.certificate, [])
    with pytest.raises(verification.VerificationError):
        _client_verifier([cert], NOW + 601).verify(leaf.certificate, [])


def test_leaf_extra_uris_make_a_two_uri_certificate(ca) -> None:
    cert, key = ca
    first = f"spiffe://{TD}/ns/default/dc/dc1/svc/a"
    second = f"spiffe://{TD}/ns/default/dc/dc1/svc/b"
    leaf = pki.issue_leaf(cert, key, first, extra_uris=[second], now=NOW)
    assert pki.uri_sans(leaf.certificate) == [first, second]


def test_leaf_without_common_name_has_empty_subject_and_critical_san(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", now=NOW)
    assert len(leaf.certificate.subject) == 0
    assert _ext(leaf.certificate, x509.SubjectAlternativeName).critical
    named = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", common_name="c", now=NOW)
    assert named.certificate.subject.rfc4514_string() == "CN=c"
    assert not _ext(named.certificate, x509.SubjectAlternativeName).critical


def test_leaf_uses_the_given_key_and_random_serials(ca) -> None:
    cert, key = ca
    leaf_key = pki.new_key()
    a = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", key=leaf_key, now=NOW)
    b = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", key=leaf_key, now=NOW)
    assert a.key is leaf_key
    assert a.certificate.serial_number != b.certificate.serial_number


def test_leaf_from_an_intermediate_ca_carries_the_intermediate(ca) -> None:
    root, root_key = ca
    inter_key = pki.new_key()
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_at(NOW - 60))
        .not_valid_after(_at(NOW + 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    leaf = pki.issue_leaf(inter, inter_key, f"spiffe://{TD}/ns/a/dc/b/svc/c", now=NOW)
    assert leaf.chain == (leaf.certificate, inter)
    aki = _ext(leaf.certificate, x509.AuthorityKeyIdentifier).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key())


def test_service_leaf_uses_the_service_spiffe_id_and_name_as_cn(ca) -> None:
    cert, key = ca
    leaf = pki.service_leaf(cert, key, ServiceName("billing"), "dc2", TD, now=NOW)
    assert pki.uri_sans(leaf.certificate) == [f"spiffe://{TD}/ns/default/dc/dc2/svc/billing"]
    assert leaf.certificate.subject.rfc4514_string() == "CN=billing"
    assert leaf.not_after == NOW + 72 * 3600


def test_service_leaf_in_a_partition_uses_the_ap_form(ca) -> None:
    cert, key = ca
    leaf = pki.service_leaf(cert, key, ServiceName("api", "team", "eu"), "dc1", TD, now=NOW)
    assert pki.uri_sans(leaf.certificate) == [f"spiffe://{TD}/ap/eu/ns/team/dc/dc1/svc/api"]


def test_service_leaf_passes_keywords_to_issue_leaf(ca) -> None:
    cert, key = ca
    leaf = pki.service_leaf(
        cert, key, ServiceName("db"), "dc1", TD, now=NOW, valid_for=60, common_name="other"
    )
    assert leaf.not_after == NOW + 60
    assert leaf.certificate.subject.rfc4514_string() == "CN=other"


def test_service_leaf_omits_a_common_name_too_long_for_x509(ca) -> None:
    cert, key = ca
    leaf = pki.service_leaf(cert, key, ServiceName("s" * 65), "dc1", TD, now=NOW)
    assert len(leaf.certificate.subject) == 0


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    name=_label,
    namespace=_label,
    partition=_label,
    datacenter=_label,
    trust_domain=st.lists(_label, min_size=1, max_size=4).map(".".join),
)
def test_any_service_leaf_carries_exactly_its_spiffe_uri(
    ca, name: str, namespace: str, partition: str, datacenter: str, trust_domain: str
) -> None:
    """Property: for any valid names, the leaf's only URI SAN is SpiffeID(...).uri."""
    cert, key = ca
    service = ServiceName(name, namespace, partition)
    leaf = pki.service_leaf(cert, key, service, datacenter, trust_domain, key=_LEAF_KEY)
    expected = SpiffeID(trust_domain, namespace, datacenter, name, partition).uri
    assert pki.uri_sans(leaf.certificate) == [expected]


_LEAF_KEY = pki.new_key()  # one key for the property test: key generation is not under test


# --- PEM -------------------------------------------------------------------------


def test_leaf_pem_round_trips_through_load_leaf(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", now=NOW)
    chain_pem, key_pem = pki.leaf_pem(leaf)
    assert chain_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    loaded = pki.load_leaf(chain_pem, key_pem)
    assert isinstance(loaded, LeafCertificate)
    assert loaded.chain == leaf.chain
    assert loaded.fingerprint == leaf.fingerprint
    assert pki.key_pem(loaded.key) == key_pem


def test_certificate_pem_round_trips_and_bundles_keep_their_order(ca) -> None:
    cert, _ = ca
    other, _ = pki.new_ca("other.consul")
    bundle = pki.certificate_pem(cert) + b"\n# comment\n" + pki.certificate_pem(other)
    assert pki.load_certificates(bundle) == [cert, other]


def test_load_private_key_reads_sec1_keys_too() -> None:
    key = pki.new_key()
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pki.key_pem(pki.load_private_key(sec1)) == pki.key_pem(key)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no PEM certificate"),
        (b"hello", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot parse"),
    ],
)
def test_load_certificates_rejects_bad_data_with_a_clear_message(data, message) -> None:
    with pytest.raises(ValueError, match=message):
        pki.load_certificates(data)


def test_load_private_key_rejects_garbage_and_encrypted_keys() -> None:
    with pytest.raises(ValueError, match="no PEM private key"):
        pki.load_private_key(b"not a key")
    with pytest.raises(ValueError, match="cannot parse"):
        pki.load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    encrypted = pki.new_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        pki.load_private_key(encrypted)


def test_load_leaf_refuses_a_key_that_is_not_the_leafs(ca) -> None:
    cert, key = ca
    leaf = pki.issue_leaf(cert, key, "spiffe://x/ns/a/dc/b/svc/c", now=NOW)
    chain_pem, _ = pki.leaf_pem(leaf)
    with pytest.raises(ValueError, match="does not match"):
        pki.load_leaf(chain_pem, pki.key_pem(pki.new_key()))


def test_leaf_from_parts_refuses_an_empty_chain() -> None:
    with pytest.raises(ValueError, match="empty"):
        pki.leaf_from_parts([], pki.new_key())


def test_uri_sans_and_trust_domain_of_handle_certificates_without_sans(ca) -> None:
    _, key = ca
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    plain = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_at(NOW))
        .not_valid_after(_at(NOW + 60))
        .sign(key, hashes.SHA256())
    )
    assert pki.uri_sans(plain) == []
    assert pki.trust_domain_of(plain) is None


# --- malformed certificates (found by fuzz/targets.py: certificate_san) -----------


def _leaf_der(ca) -> bytes:
    leaf = pki.service_leaf(*ca, ServiceName("web"), "dc1", TD, now=NOW)
    return leaf.certificate.public_bytes(serialization.Encoding.DER)


def _with_x509_version(der: bytes, version: int) -> bytes:
    # tbsCertificate.version is "[0] EXPLICIT INTEGER": a0 03 02 01 <v>.
    assert der.count(b"\xa0\x03\x02\x01\x02") == 1
    return der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01" + bytes([version]))


def test_load_certificates_refuses_an_unknown_x509_version_with_value_error(ca) -> None:
    """A PEM certificate whose version field is 41 raises the documented ValueError.

    cryptography raises ``InvalidVersion`` (not a ValueError), which escaped every
    caller that catches ValueError (file_certs, consul_certs' ca/roots, builtin_ca).
    """
    der = _with_x509_version(_leaf_der(ca), 41)
    pem = (
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ValueError, match="cannot parse PEM certificate"):
        pki.load_certificates(pem)


def test_uri_sans_of_a_certificate_with_two_san_extensions_is_a_value_error(ca) -> None:
    """A certificate carrying the subjectAltName extension twice raises ValueError.

    Built by renaming the leaf's keyUsage OID (2.5.29.15) to subjectAltName's
    (2.5.29.17); cryptography then raises ``DuplicateExtension``, which is no ValueError.
    """
    der = _leaf_der(ca).replace(b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x11", 1)
    cert = x509.load_der_x509_certificate(der)
    with pytest.raises(ValueError, match="do not parse"):
        pki.uri_sans(cert)
    with pytest.raises(ValueError, match="do not parse"):
        pki.trust_domain_of(cert)
