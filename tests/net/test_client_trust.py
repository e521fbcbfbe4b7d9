"""Trust bundles per trust domain (gwcore.net.client_trust), without a connection."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from gwcore.contract import pki
from gwcore.contract.providers import TrustRoot
from gwcore.net.client_trust import TrustBundles, VerifiedChains, misconfigured
from gwcore.testing import MeshCA

LOCAL = "11111111-2222-3333-4444-555555555555.consul"


def root_without_spiffe_uri() -> x509.Certificate:
    """A CA root with no URI SAN at all, as Vault's or cert-manager's often are."""
    return ca_without_spiffe_uri()[0]


def ca_without_spiffe_uri() -> tuple[x509.Certificate, object]:
    """Such a root and its key."""
    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault root")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    ), key


def test_roots_are_grouped_by_their_configured_trust_domain() -> None:
    """A root belongs to the trust domain it is configured for (lower-cased), not to
    the one it names: a root without a spiffe:// URI SAN configured for the peer is
    the peer's, never the local domain's (issue 16 §1)."""
    local, peer, other = MeshCA(LOCAL), MeshCA("peer.consul"), root_without_spiffe_uri()
    bundles = TrustBundles.build(
        [
            TrustRoot(local.cert, LOCAL.upper()),
            TrustRoot(peer.cert, "peer.consul"),
            TrustRoot(other, "Peer.Consul"),
        ]
    )
    assert bundles.roots == {LOCAL: (local.cert,), "peer.consul": (peer.cert, other)}
    assert bundles.ders["peer.consul"] == {
        c.public_bytes(serialization.Encoding.DER) for c in (peer.cert, other)
    }
    assert bundles.refused == ()
    assert bundles.accepted() == [local.cert, peer.cert, other]


def test_a_root_naming_another_trust_domain_is_refused() -> None:
    """A root configured for one trust domain whose spiffe:// URI SAN names another
    (a peer root listed as a local one, or the local root listed as a peer's) is in
    no bundle, with the reason naming both domains."""
    local, peer = MeshCA(LOCAL), MeshCA("peer.consul")
    bundles = TrustBundles.build(
        [TrustRoot(peer.cert, LOCAL), TrustRoot(local.cert, "peer.consul")]
    )
    assert bundles.roots == {} and bundles.accepted() == []
    reasons = [reason for _, reason in bundles.refused]
    assert reasons == [
        f"the root names trust domain 'peer.consul' in its spiffe:// URI SAN but is "
        f"configured for {LOCAL!r}",
        f"the root names trust domain {LOCAL!r} in its spiffe:// URI SAN but is "
        "configured for 'peer.consul'",
    ]
    assert misconfigured(TrustRoot(peer.cert, "PEER.consul")) is None


def _x509(cert: x509.Certificate) -> crypto.X509:
    return crypto.X509.from_cryptography(cert)


def test_a_leaf_verifies_only_against_its_own_domains_bundle() -> None:
    """A leaf signed by the peer CA verifies against the peer bundle, is
    ``untrusted_ca`` against the local one, and a domain without roots is
    ``wrong_trust_bundle``; an expired leaf is ``expired_cert``."""
    local, peer = MeshCA(LOCAL), MeshCA("peer.consul")
    bundles = TrustBundles.build(
        [TrustRoot(local.cert, LOCAL), TrustRoot(peer.cert, "peer.consul")]
    )
    forged = _x509(peer.leaf_with_uris([f"spiffe://{LOCAL}/ns/default/dc/dc1/svc/web"]).certificate)
    assert bundles._verify("peer.consul", forged, ()) is None
    assert bundles._verify(LOCAL, forged, ()) == "untrusted_ca"
    assert bundles._verify("third.consul", forged, ()) == "wrong_trust_bundle"
    expired = local.leaf("web", now=datetime.datetime.now().timestamp() - 7200, valid_for=60)
    assert bundles._verify(LOCAL, _x509(expired.certificate), ()) == "expired_cert"


def test_verified_chains_are_bounded_least_recently_used_first() -> None:
    """The remembered paths never exceed their size; the least recently used goes."""
    chains = VerifiedChains(size=2)
    ca = MeshCA(LOCAL)
    marker = (_x509(ca.cert),)
    chains.remember(b"a", marker)
    chains.remember(b"b", marker)
    assert chains.get(b"a") == marker  # a is now the most recently used
    chains.remember(b"c", marker)
    assert chains.get(b"b") == ()
    assert chains.get(b"a") == marker and chains.get(b"c") == marker
