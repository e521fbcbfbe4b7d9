"""Certificate authority primitives: make a CA, issue mesh leaves, convert to and from PEM.

Pure computation on top of ``cryptography``: no file or network I/O and no Twisted,
so the built-in CA plugin, ``tgw connect`` and the tests all share one way of
building certificates. Keys are EC P-256 unless a caller passes its own.

Certificates follow Consul's built-in CA (reference §2): the root carries the URI
SAN ``spiffe://<trust-domain>``; a leaf carries exactly one SPIFFE URI SAN (more
only when a test asks for them), is usable for both server and client
authentication, and names its issuer through the Authority Key Identifier.
Validity times are whole seconds, as X.509 encodes them.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gwcore.contract.providers import LeafCertificate
from gwcore.policy.model import ServiceName, SpiffeID

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes,
        PrivateKeyTypes,
    )

DEFAULT_CA_VALIDITY = 10 * 365 * 86400.0
DEFAULT_LEAF_VALIDITY = 72 * 3600.0
_CA_NOT_BEFORE_SKEW = 60.0
_MAX_CN_LENGTH = 64  # X.520 ub-common-name

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key (fast handshakes, what Consul's CA uses by default)."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(
    trust_domain: str,
    *,
    common_name: str = "tgw built-in CA",
    valid_for: float = DEFAULT_CA_VALIDITY,
    now: float | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed root CA for ``trust_domain`` and its private key.

    The root is valid from one minute before ``now`` (default: the current time)
    for ``valid_for`` seconds, has BasicConstraints CA=true (critical), KeyUsage
    keyCertSign and cRLSign (critical), a Subject Key Identifier, and the URI SAN
    ``spiffe://<trust_domain>`` from which :func:`trust_domain_of` reads the domain
    back. ``key`` defaults to a new P-256 key.
    """
    key = key if key is not None else new_key()
    now = time.time() if now is None else now
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - _CA_NOT_BEFORE_SKEW))
        .not_valid_after(_utc(now + valid_for))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(_root_uri(trust_domain))]),
            critical=False,
        )
    )
    return builder.sign(key, _signature_hash(key)), key


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    spiffe_uri: str,
    *,
    dns_names: Sequence[str] = (),
    extra_uris: Sequence[str] = (),
    valid_for: float = DEFAULT_LEAF_VALIDITY,
    now: float | None = None,
    not_before_skew: float = 60,
    key: PrivateKeyTypes | None = None,
    common_name: str | None = None,
    is_ca: bool = False,
    key_usage: Sequence[str] = ("digital_signature", "key_encipherment"),
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
) -> LeafCertificate:
    """Sign a mesh leaf for ``spiffe_uri`` with the CA ``ca_cert``/``ca_key``.

    The leaf is valid from ``now - not_before_skew`` until ``now + valid_for``, but
    never beyond the CA's own notAfter. It has BasicConstraints CA=false, KeyUsage
    digitalSignature and keyEncipherment, ExtendedKeyUsage serverAuth and
    clientAuth, Subject and Authority Key Identifiers, a random serial, the URI SANs
    ``spiffe_uri`` then ``extra_uris`` (a real mesh leaf has exactly one; extras let
    tests build invalid identities) and the DNS SANs ``dns_names``. The subject is
    ``CN=common_name``, or empty when ``common_name`` is ``None`` (the SAN extension
    is then critical, as RFC 5280 requires).

    The returned chain is ``(leaf,)`` for a self-signed CA and ``(leaf, ca_cert)``
    when the CA is itself an intermediate, so a server can present a complete path.
    ``key`` defaults to a new P-256 key. ``is_ca``, ``key_usage`` (names of
    :class:`x509.KeyUsage` flags) and ``extended_key_usage`` (``None`` leaves the
    extension out) let tests build leaves a gateway must refuse.
    """
    key = key if key is not None else new_key()
    now = time.time() if now is None else now
    not_after = min(now + valid_for, ca_cert.not_valid_after_utc.timestamp())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    # An empty spiffe_uri gives a leaf without one (tests of identity rejection need it).
    sans: list[x509.GeneralName] = (
        [x509.UniformResourceIdentifier(spiffe_uri)] if spiffe_uri else []
    )
    sans += [x509.UniformResourceIdentifier(u) for u in extra_uris]
    sans += [x509.DNSName(d) for d in dns_names]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - not_before_skew))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**_key_usage_flags(key_usage)), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=not common_name)
    )
    if extended_key_usage is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
        )
    cert = builder.sign(ca_key, _signature_hash(ca_key))
    chain = (cert,) if ca_cert.subject == ca_cert.issuer else (cert, ca_cert)
    return LeafCertificate(chain=chain, key=key)


def service_leaf(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    service: ServiceName,
    datacenter: str,
    trust_domain: str,
    **kw: object,
) -> LeafCertificate:
    """A leaf for ``service`` in ``datacenter``: its URI SAN is the service's SPIFFE ID.

    The URI is ``SpiffeID(trust_domain, ns, datacenter, name, partition).uri``, which
    is what sidecars expect from the server certificate of a linked service. The
    common name defaults to the service name (omitted if longer than X.509 allows).
    Other keyword arguments go to :func:`issue_leaf`.
    """
    uri = SpiffeID(
        trust_domain=trust_domain,
        namespace=service.namespace,
        datacenter=datacenter,
        name=service.name,
        partition=service.partition,
    ).uri
    if "common_name" not in kw:
        kw["common_name"] = service.name if len(service.name) <= _MAX_CN_LENGTH else None
    return issue_leaf(ca_cert, ca_key, uri, **kw)  # type: ignore[arg-type]


# --- inspection ------------------------------------------------------------------


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs in order (empty when it has no SAN extension).

    Raises ``ValueError`` when the extensions do not parse, one appears twice, or a
    name is an x400Address/EDIPartyName (cryptography's ``DuplicateExtension`` and
    ``UnsupportedGeneralNameType`` are not ``ValueError``; found by fuzzing).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise ValueError(f"certificate extensions do not parse: {e}") from None
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def trust_domain_of(cert: x509.Certificate) -> str | None:
    """The trust domain a CA certificate declares (its ``spiffe://<td>`` URI SAN), lower-cased.

    ``None`` when it has no SPIFFE URI without a path.
    """
    for uri in uri_sans(cert):
        if uri.lower().startswith("spiffe://"):
            rest = uri[len("spiffe://") :].rstrip("/")
            if rest and "/" not in rest:
                return rest.lower()
    return None


def fingerprint_hex(cert: x509.Certificate) -> str:
    """Colon-separated lower-case SHA-1 of the DER certificate, as Consul's root ``ID``."""
    return cert.fingerprint(hashes.SHA1()).hex(":")


# --- PEM -------------------------------------------------------------------------


def certificate_pem(cert: x509.Certificate) -> bytes:
    """One certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKeyTypes) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (``BEGIN PRIVATE KEY``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def leaf_pem(leaf: LeafCertificate) -> tuple[bytes, bytes]:
    """``(chain PEM, key PEM)``: the chain leaf first, as :func:`load_leaf` reads it back."""
    return b"".join(certificate_pem(c) for c in leaf.chain), key_pem(leaf.key)


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in file order.

    Raises ``ValueError`` with a message fit for a log line when the data holds no
    PEM certificate or one of them cannot be parsed.
    """
    if _PEM_CERTIFICATE not in pem:
        raise ValueError("no PEM certificate found (no '-----BEGIN CERTIFICATE-----' line)")
    try:
        return x509.load_pem_x509_certificates(pem)
    # InvalidVersion (an X.509 version other than 1 or 3) is not a ValueError.
    except (ValueError, x509.InvalidVersion) as e:
        raise ValueError(f"cannot parse PEM certificate: {_first_line(e)}") from None


def load_private_key(pem: bytes) -> PrivateKeyTypes:
    """The private key in ``pem`` (PKCS#8, SEC1 or PKCS#1), which must not be encrypted.

    Raises ``ValueError`` with a message fit for a log line otherwise.
    """
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        raise ValueError("no PEM private key found (no '-----BEGIN ... PRIVATE KEY-----' line)")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the private key is encrypted; an unencrypted key is needed") from None
    except UnsupportedAlgorithm as e:
        raise ValueError(f"unsupported private key type: {_first_line(e)}") from None
    except ValueError as e:
        raise ValueError(f"cannot parse PEM private key: {_first_line(e)}") from None


def leaf_from_parts(chain: Sequence[x509.Certificate], key: PrivateKeyTypes) -> LeafCertificate:
    """Pair a chain (leaf first) with its key; ``ValueError`` if the key is not the leaf's."""
    if not chain:
        raise ValueError("the certificate chain is empty")
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise ValueError("the private key does not match the certificate's public key")
    return LeafCertificate(chain=tuple(chain), key=key)


def load_leaf(chain_pem: bytes, key_pem: bytes) -> LeafCertificate:
    """A :class:`LeafCertificate` from a chain PEM (leaf first) and a key PEM.

    Raises ``ValueError`` when either cannot be parsed or the key does not match the
    leaf's public key.
    """
    return leaf_from_parts(load_certificates(chain_pem), load_private_key(key_pem))


# --- internals -------------------------------------------------------------------


def _utc(seconds: float) -> datetime.datetime:
    # X.509 times have whole seconds; truncate explicitly so callers can predict them.
    return datetime.datetime.fromtimestamp(math.floor(seconds), tz=datetime.UTC)


_KEY_USAGE_FLAGS = (
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


def _key_usage_flags(names: Sequence[str]) -> dict[str, bool]:
    unknown = set(names) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}")
    return {flag: flag in names for flag in _KEY_USAGE_FLAGS}


def _root_uri(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}"


def _signature_hash(key: object) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
