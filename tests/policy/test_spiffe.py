"""Tests for gwcore.policy.spiffe: Consul SPIFFE URIs and the URI SAN of a certificate."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.model import ServiceName, SpiffeID
from gwcore.policy.spiffe import (
    IDENTITY_CACHE_SIZE,
    IDENTITY_ERROR_REASONS,
    IdentityError,
    identity_from_certificate,
    identity_from_der,
    parse_spiffe_id,
    service_spiffe_id,
)

TD = "11111111-2222-3333-4444-555555555555.consul"
WEB_URI = f"spiffe://{TD}/ns/default/dc/dc1/svc/web"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param(WEB_URI, SpiffeID(TD, "default", "dc1", "web"), id="service"),
        pytest.param(
            f"spiffe://{TD}/ap/part1/ns/team/dc/dc2/svc/api",
            SpiffeID(TD, "team", "dc2", "api", partition="part1"),
            id="partition",
        ),
        pytest.param(
            f"spiffe://{TD}/gateway/mesh/dc/dc2",
            SpiffeID(TD, "default", "dc2", "", kind="mesh-gateway"),
            id="mesh-gateway",
        ),
        pytest.param(
            "SPIFFE://Example.CONSUL/ns/Default/dc/DC1/svc/Web",
            SpiffeID("example.consul", "Default", "DC1", "Web"),
            id="scheme-and-trust-domain-case-insensitive-path-kept",
        ),
        pytest.param(
            f"spiffe://{TD}/ns/default/dc/dc1/svc/my_svc.v2-a",
            SpiffeID(TD, "default", "dc1", "my_svc.v2-a"),
            id="segment-charset",
        ),
    ],
)
def test_parse_spiffe_id_accepts_consul_forms(uri: str, expected: SpiffeID) -> None:
    """Consul's service, partitioned service and mesh gateway URIs parse to SpiffeIDs."""
    assert parse_spiffe_id(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("", id="empty"),
        pytest.param(f"https://{TD}/ns/default/dc/dc1/svc/web", id="wrong-scheme"),
        pytest.param(f"spiffe:/{TD}/ns/default/dc/dc1/svc/web", id="one-slash"),
        pytest.param("spiffe:///ns/default/dc/dc1/svc/web", id="no-trust-domain"),
        pytest.param(f"spiffe://{TD}", id="no-path"),
        pytest.param(f"spiffe://{TD}/", id="root-path"),
        pytest.param(f"spiffe://{TD}:8443/ns/default/dc/dc1/svc/web", id="port"),
        pytest.param(f"spiffe://user@{TD}/ns/default/dc/dc1/svc/web", id="userinfo"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/web/", id="trailing-slash"),
        pytest.param(f"spiffe://{TD}/ns//dc/dc1/svc/web", id="empty-segment"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/w%65b", id="percent"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x=1", id="query"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/web#frag", id="fragment"),
        pytest.param(f"spiffe://{TD}/ns/../dc/dc1/svc/web", id="dot-dot"),
        pytest.param(f"spiffe://{TD}/ns/a..b/dc/dc1/svc/web", id="contains-dot-dot"),
        pytest.param(f"spiffe://{TD}/ns/./dc/dc1/svc/web", id="dot"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/we b", id="space"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/wéb", id="non-ascii"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1", id="missing-svc"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/web/extra", id="extra-segment"),
        pytest.param(f"spiffe://{TD}/dc/dc1/svc/web", id="missing-ns"),
        pytest.param(f"spiffe://{TD}/ns/default/svc/web/dc/dc1", id="wrong-order"),
        pytest.param(f"spiffe://{TD}/gateway/mesh/dc", id="gateway-missing-dc"),
        pytest.param(f"spiffe://{TD}/gateway/ingress/dc/dc1", id="other-gateway-kind"),
        pytest.param(f"spiffe://{TD}/agent/client/dc/dc1/id/abc", id="agent-identity"),
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/" + "a" * 2100, id="too-long"),
    ],
)
def test_parse_spiffe_id_rejects(uri: str) -> None:
    """Anything but a well-formed Consul service or mesh gateway URI is bad_spiffe_id."""
    with pytest.raises(IdentityError) as info:
        parse_spiffe_id(uri)
    assert info.value.reason == "bad_spiffe_id"


def test_identity_error_message_is_one_bounded_line() -> None:
    """str() of an error is 'reason: detail' on one line, even for a hostile URI."""
    with pytest.raises(IdentityError) as info:
        parse_spiffe_id("spiffe://td/ns/x\ny/" + "z" * 5000)
    text = str(info.value)
    assert text.startswith("bad_spiffe_id: ")
    assert "\n" not in text
    assert len(text) < 500


def test_identity_error_reason_vocabulary_is_closed() -> None:
    """A reason outside the metric-label vocabulary is a programming error."""
    assert {
        "no_uri_san",
        "multiple_uri_sans",
        "bad_spiffe_id",
        "untrusted_domain",
        "ca_certificate",
        "bad_key_usage",
        "wrong_trust_bundle",
    } == set(IDENTITY_ERROR_REASONS)
    with pytest.raises(ValueError):
        IdentityError("something_else", "x")


@pytest.mark.parametrize(
    ("service", "expected_uri"),
    [
        pytest.param(ServiceName("billing"), f"spiffe://{TD}/ns/default/dc/dc1/svc/billing"),
        pytest.param(
            ServiceName("billing", "team", "ap1"),
            f"spiffe://{TD}/ap/ap1/ns/team/dc/dc1/svc/billing",
        ),
    ],
)
def test_service_spiffe_id(service: ServiceName, expected_uri: str) -> None:
    """service_spiffe_id is the identity Consul issues, and it survives a parse."""
    identity = service_spiffe_id(service, "dc1", TD.upper())
    assert identity.uri == expected_uri
    assert identity.service == service
    assert parse_spiffe_id(identity.uri) == identity


_KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(
    *general_names: x509.GeneralName,
    ca: bool | None = False,
    digital_signature: bool | None = True,
    purposes: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    """A self-signed certificate; ``None`` leaves basicConstraints / keyUsage out."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if general_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(general_names)), critical=False
        )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca, None), critical=True)
    if digital_signature is not None:
        usage = dict.fromkeys(KEY_USAGE_FLAGS, False)
        usage["digital_signature"] = digital_signature
        usage["key_agreement"] = not digital_signature
        builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
    if purposes is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    return builder.sign(_KEY, hashes.SHA256())


KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"ca": True}, "ca_certificate", id="ca-true"),
        pytest.param({"digital_signature": None}, "bad_key_usage", id="no-key-usage"),
        pytest.param({"digital_signature": False}, "bad_key_usage", id="no-digital-signature"),
        pytest.param(
            {"purposes": [ExtendedKeyUsageOID.SERVER_AUTH]}, "bad_key_usage", id="server-only"
        ),
    ],
)
def test_identity_from_certificate_requires_an_end_entity_client_leaf(
    options: dict, reason: str
) -> None:
    """A certificate with a valid trusted SPIFFE ID is still no service identity when it
    is a CA (basicConstraints CA:TRUE), lacks keyUsage digitalSignature, or has an
    extendedKeyUsage without clientAuth."""
    with pytest.raises(IdentityError) as info:
        identity_from_certificate(_certificate(_uri(WEB_URI), **options), {TD})
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="ca-false"),
        pytest.param({"ca": None}, id="no-basic-constraints"),
        pytest.param({"purposes": [ExtendedKeyUsageOID.CLIENT_AUTH]}, id="client-auth"),
        pytest.param(
            {"purposes": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]},
            id="both-purposes",
        ),
    ],
)
def test_identity_from_certificate_accepts_end_entity_leaves(options: dict) -> None:
    """CA:FALSE or no basicConstraints, digitalSignature, and no EKU or one with
    clientAuth: what Consul's CA issues."""
    identity = identity_from_certificate(_certificate(_uri(WEB_URI), **options), {TD})
    assert identity == SpiffeID(TD, "default", "dc1", "web")


def _uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        pytest.param((), "no_uri_san", id="no-san-extension"),
        pytest.param((x509.DNSName("web.example"),), "no_uri_san", id="dns-san-only"),
        pytest.param(
            (_uri(WEB_URI), _uri(f"spiffe://{TD}/ns/default/dc/dc1/svc/admin")),
            "multiple_uri_sans",
            id="two-uri-sans",
        ),
        pytest.param((_uri(WEB_URI), _uri(WEB_URI)), "multiple_uri_sans", id="same-uri-twice"),
        pytest.param((_uri("https://web.example/"),), "bad_spiffe_id", id="not-spiffe"),
        pytest.param(
            (_uri("spiffe://evil.consul/ns/default/dc/dc1/svc/web"),),
            "untrusted_domain",
            id="untrusted",
        ),
    ],
)
def test_identity_from_certificate_rejects(
    names: tuple[x509.GeneralName, ...], reason: str
) -> None:
    """Only a certificate with exactly one trusted Consul URI SAN yields an identity."""
    cert = _certificate(*names)
    with pytest.raises(IdentityError) as info:
        identity_from_certificate(cert, {TD})
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("names", "trusted", "expected"),
    [
        pytest.param((_uri(WEB_URI),), {TD}, SpiffeID(TD, "default", "dc1", "web"), id="one-uri"),
        pytest.param(
            (x509.DNSName("web.example"), _uri(WEB_URI)),
            {TD},
            SpiffeID(TD, "default", "dc1", "web"),
            id="uri-beside-dns",
        ),
        pytest.param(
            (_uri(f"spiffe://{TD.upper()}/ns/default/dc/dc1/svc/web"),),
            {TD},
            SpiffeID(TD, "default", "dc1", "web"),
            id="upper-case-trust-domain-in-cert",
        ),
        pytest.param(
            (_uri(WEB_URI),),
            [TD.upper(), "other.consul"],
            SpiffeID(TD, "default", "dc1", "web"),
            id="upper-case-trusted-list",
        ),
        pytest.param(
            (_uri("spiffe://peer.consul/gateway/mesh/dc/dc2"),),
            ("peer.consul", TD),
            SpiffeID("peer.consul", "default", "dc2", "", kind="mesh-gateway"),
            id="mesh-gateway-extra-domain",
        ),
    ],
)
def test_identity_from_certificate(
    names: tuple[x509.GeneralName, ...], trusted: object, expected: SpiffeID
) -> None:
    """The single URI SAN is parsed and its trust domain checked case-insensitively."""
    assert identity_from_certificate(_certificate(*names), trusted) == expected  # type: ignore[arg-type]


def test_identity_from_certificate_with_no_trusted_domains_rejects() -> None:
    """An empty trust list trusts nobody."""
    with pytest.raises(IdentityError) as info:
        identity_from_certificate(_certificate(_uri(WEB_URI)), ())
    assert info.value.reason == "untrusted_domain"
    assert TD in info.value.detail


def _der(*names: x509.GeneralName) -> bytes:
    return _certificate(*names).public_bytes(serialization.Encoding.DER)


def test_identity_from_der_parses_once_per_certificate_and_trust_set() -> None:
    """The handshake path's cache: the same DER and trust set give the very same
    identity object without parsing again; another trust set is decided afresh."""
    identity_from_der.cache_clear()
    der = _der(_uri(WEB_URI))
    first = identity_from_der(der, frozenset({TD}))
    assert first == SpiffeID(TD, "default", "dc1", "web")
    assert identity_from_der(bytes(der), frozenset({TD})) is first
    info = identity_from_der.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, IDENTITY_CACHE_SIZE)
    with pytest.raises(IdentityError) as refused:
        identity_from_der(der, frozenset({"other.consul"}))
    assert refused.value.reason == "untrusted_domain"


def test_identity_from_der_refuses_every_time_and_caches_no_refusal() -> None:
    """A refused certificate is refused on every connection (nothing cached for it),
    and bytes that are not a certificate are ``bad_spiffe_id``, not an exception."""
    identity_from_der.cache_clear()
    der = _der(_uri(WEB_URI), _uri(f"spiffe://{TD}/ns/default/dc/dc1/svc/admin"))
    for _ in range(2):
        with pytest.raises(IdentityError) as refused:
            identity_from_der(der, frozenset({TD}))
        assert refused.value.reason == "multiple_uri_sans"
    assert identity_from_der.cache_info().currsize == 0
    with pytest.raises(IdentityError) as garbage:
        identity_from_der(b"\x30\x03\x02\x01\x00", frozenset({TD}))
    assert garbage.value.reason == "bad_spiffe_id"


segment = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}\Z").filter(
    lambda s: ".." not in s and s != "."
)
trust_domain = st.from_regex(r"\A[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,2}\Z")


@given(
    td=trust_domain,
    ns=segment,
    dc=segment,
    name=segment,
    partition=st.just("default") | segment.filter(lambda s: s != "default"),
)
def test_service_uri_round_trips(td: str, ns: str, dc: str, name: str, partition: str) -> None:
    """parse_spiffe_id(id.uri) == id for every service identity with valid segments."""
    identity = SpiffeID(td, ns, dc, name, partition=partition)
    parsed = parse_spiffe_id(identity.uri)
    assert parsed == identity
    assert parsed.uri == identity.uri


@given(td=trust_domain, dc=segment)
def test_mesh_gateway_uri_round_trips(td: str, dc: str) -> None:
    """A mesh gateway identity survives uri -> parse -> uri."""
    uri = f"spiffe://{td}/gateway/mesh/dc/{dc}"
    assert parse_spiffe_id(uri).uri == uri


@given(st.text(max_size=120))
def test_parse_spiffe_id_only_raises_identity_error(text: str) -> None:
    """Arbitrary input either parses to an identity that re-renders, or is bad_spiffe_id."""
    try:
        identity = parse_spiffe_id(text)
    except IdentityError as e:
        assert e.reason == "bad_spiffe_id"
    else:
        assert parse_spiffe_id(identity.uri) == identity


control_char = st.sampled_from([chr(c) for c in (*range(0x20), 0x7F)])


@given(td=trust_domain, ns=segment, dc=segment, name=segment, data=st.data())
def test_parse_spiffe_id_refuses_any_control_character(
    td: str, ns: str, dc: str, name: str, data: st.DataObject
) -> None:
    """A control character anywhere in a SPIFFE URI — a trailing newline after the
    name or the trust domain included — is ``bad_spiffe_id``, never a distinct identity."""
    uri = SpiffeID(td, ns, dc, name).uri
    assert parse_spiffe_id(uri).uri == uri
    control = data.draw(st.just("\n") | control_char)  # "$" let exactly this one through
    at = data.draw(st.just(len(uri)) | st.integers(len("spiffe://"), len(uri)))
    with pytest.raises(IdentityError) as info:
        parse_spiffe_id(uri[:at] + control + uri[at:])
    assert info.value.reason == "bad_spiffe_id"


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(f"spiffe://{TD}/ns/default/dc/dc1/svc/web\n", id="name"),
        pytest.param(f"spiffe://{TD}\n/ns/default/dc/dc1/svc/web", id="trust-domain"),
        pytest.param(f"spiffe://{TD}/ns/default\n/dc/dc1/svc/web", id="namespace"),
    ],
)
def test_parse_spiffe_id_refuses_a_trailing_newline_in_a_segment(uri: str) -> None:
    """The example from issue 16: ``.../svc/web\\n`` does not parse as an identity."""
    with pytest.raises(IdentityError) as info:
        parse_spiffe_id(uri)
    assert info.value.reason == "bad_spiffe_id"


def test_identity_from_der_refuses_an_unknown_x509_version_as_bad_spiffe_id() -> None:
    """A DER certificate with X.509 version 41 is ``bad_spiffe_id``, not a stray exception.

    Found by fuzz/targets.py (certificate_san): cryptography raises ``InvalidVersion``,
    which is not a ValueError, so it escaped identity_from_der's documented contract.
    """
    der = _der(_uri(WEB_URI))
    # tbsCertificate.version is "[0] EXPLICIT INTEGER": a0 03 02 01 02 is v3.
    bad = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x29", 1)
    assert bad != der
    with pytest.raises(IdentityError) as caught:
        identity_from_der(bad, frozenset({TD}))
    assert caught.value.reason == "bad_spiffe_id"


def test_identity_from_der_refuses_a_repeated_extension_as_bad_spiffe_id() -> None:
    """A certificate carrying basicConstraints twice is ``bad_spiffe_id``.

    Found by replaying the fuzz corpus (fuzz/corpus/certificate_san) after the
    end-entity checks were added: cryptography raises ``DuplicateExtension``, which
    is not a ValueError, so it escaped identity_from_der.
    """
    der = _der(_uri(WEB_URI))
    # Rename the keyUsage extension's OID (2.5.29.15) to basicConstraints' (2.5.29.19).
    bad = der.replace(b"\x06\x03\x55\x1d\x0f", b"\x06\x03\x55\x1d\x13", 1)
    assert bad != der
    with pytest.raises(IdentityError) as caught:
        identity_from_der(bad, frozenset({TD}))
    assert caught.value.reason == "bad_spiffe_id"


def test_identity_from_der_refuses_an_unsupported_general_name_as_bad_spiffe_id() -> None:
    """A certificate whose extensions hold an x400Address/EDIPartyName name is
    ``bad_spiffe_id``: cryptography raises ``UnsupportedGeneralNameType`` (not a
    ValueError). The input is the one the certificate_san fuzz target found."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "certificate_san"
    der = (corpus / "crash-unsupported-general-name").read_bytes()
    with pytest.raises(IdentityError) as caught:
        identity_from_der(der, frozenset({TD}))
    assert caught.value.reason == "bad_spiffe_id"
