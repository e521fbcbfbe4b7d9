"""SPIFFE identities: Consul's URI forms and the one URI SAN of a client certificate.

Accepted forms (``agent/connect/uri_service.go`` and ``uri_mesh_gateway.go``):

- ``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<name>``
- ``spiffe://<td>/ap/<partition>/ns/<ns>/dc/<dc>/svc/<name>``
- ``spiffe://<td>/gateway/mesh/dc/<dc>`` (a mesh gateway; its ``name`` is empty)

The certificate chain has already been verified by the time these functions run;
what is checked here is that the identity in it is unambiguous and trusted.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gwcore.policy.model import DEFAULT_NAMESPACE, DEFAULT_PARTITION, ServiceName, SpiffeID

#: Every value :attr:`IdentityError.reason` takes; it is a metric label, so it stays closed.
IDENTITY_ERROR_REASONS = frozenset(
    {
        "no_uri_san",
        "multiple_uri_sans",
        "bad_spiffe_id",
        "untrusted_domain",
        "ca_certificate",
        "bad_key_usage",
        "wrong_trust_bundle",
    }
)

#: Distinct client certificates whose identity :func:`identity_from_der` remembers.
IDENTITY_CACHE_SIZE = 1024

# From the SPIFFE ID spec: these bounds keep a hostile certificate from feeding
# arbitrarily large or odd strings into logs and policy.
_MAX_URI_LENGTH = 2048
# Always used with fullmatch: "$" would also match before a trailing newline, so
# ".../svc/web\n" would parse as a second spelling of web.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = "spiffe://"
_DETAIL_VALUE_LIMIT = 200


class IdentityError(Exception):
    """A client certificate whose identity cannot be used.

    ``reason`` is one of :data:`IDENTITY_ERROR_REASONS` (safe as a Prometheus label);
    ``detail`` is for humans and logs. ``str(error)`` is one line: ``"reason: detail"``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in IDENTITY_ERROR_REASONS:
            raise ValueError(f"unknown identity error reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(reason, detail)

    def __str__(self) -> str:
        return f"{self.reason}: {' '.join(self.detail.split())}"


def _shown(value: str) -> str:
    """A bounded, quoted rendering of attacker-supplied text for ``detail``."""
    if len(value) > _DETAIL_VALUE_LIMIT:
        return repr(value[:_DETAIL_VALUE_LIMIT]) + "..."
    return repr(value)


def parse_spiffe_id(uri: str) -> SpiffeID:
    """Parse one of Consul's SPIFFE URIs; raise ``IdentityError("bad_spiffe_id")`` otherwise.

    The scheme and trust domain are case-insensitive and the trust domain is returned
    lower-cased; path segments keep their case. Every path segment must be non-empty and
    made of ``[A-Za-z0-9._-]`` (the SPIFFE spec's set, which excludes ``%``, ``?`` and
    ``#``), must not contain ``..`` and must not be ``.``. A round trip holds:
    ``parse_spiffe_id(uri).uri == uri`` for every canonical (lower-case trust domain) URI.
    """

    def bad(why: str) -> IdentityError:
        return IdentityError("bad_spiffe_id", f"{_shown(uri)} {why}")

    if not isinstance(uri, str):
        raise IdentityError("bad_spiffe_id", f"URI SAN is not text: {type(uri).__name__}")
    if len(uri) > _MAX_URI_LENGTH:
        raise bad(f"is longer than {_MAX_URI_LENGTH} characters")
    if uri[: len(_SCHEME)].lower() != _SCHEME:
        raise bad("is not a spiffe:// URI")
    trust_domain, slash, path = uri[len(_SCHEME) :].partition("/")
    trust_domain = trust_domain.lower()
    if not trust_domain or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise bad("has no valid trust domain")
    if not slash:
        raise bad("has no path")
    segments = path.split("/")
    for segment in segments:
        if not segment:
            raise bad("has an empty path segment")
        if not _SEGMENT.fullmatch(segment):
            raise bad("has a path segment with characters outside [A-Za-z0-9._-]")
        if ".." in segment or segment == ".":
            raise bad("has a dot path segment")

    match segments:
        case ["ns", namespace, "dc", datacenter, "svc", name]:
            return SpiffeID(trust_domain, namespace, datacenter, name)
        case ["ap", partition, "ns", namespace, "dc", datacenter, "svc", name]:
            return SpiffeID(trust_domain, namespace, datacenter, name, partition=partition)
        case ["gateway", "mesh", "dc", datacenter]:
            return SpiffeID(trust_domain, DEFAULT_NAMESPACE, datacenter, "", kind="mesh-gateway")
    raise bad("is not a Consul service or mesh gateway identity")


def check_end_entity(cert: x509.Certificate) -> None:
    """Refuse a client certificate that is not a TLS client's end-entity leaf.

    ``basicConstraints`` must be absent or ``CA:FALSE`` (``ca_certificate``): a CA
    certificate is an issuer, never a workload, even when it carries a SPIFFE ID.
    ``keyUsage`` must be present with ``digitalSignature`` (the client signs its
    CertificateVerify), and an ``extendedKeyUsage``, when present, must list
    ``clientAuth`` (``bad_key_usage``). Raises :class:`IdentityError`.
    """
    extensions = cert.extensions
    try:
        constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise IdentityError("ca_certificate", "certificate has basicConstraints CA:TRUE")
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise IdentityError("bad_key_usage", "certificate has no keyUsage") from None
    if not usage.digital_signature:
        raise IdentityError("bad_key_usage", "keyUsage lacks digitalSignature")
    try:
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in purposes:
        raise IdentityError("bad_key_usage", "extendedKeyUsage lacks clientAuth")


def identity_from_certificate(cert: x509.Certificate, trusted_domains: Collection[str]) -> SpiffeID:
    """The identity in a verified certificate's single URI SAN.

    Exactly one URI SAN is required: none gives ``no_uri_san`` and more than one gives
    ``multiple_uri_sans`` (two identities in one certificate are ambiguous, so neither
    is used; py-spiffe PR #428 made the same choice). The SAN must parse
    (``bad_spiffe_id``) and its trust domain must be in ``trusted_domains``, compared
    case-insensitively (``untrusted_domain``). The certificate must be an
    end-entity client leaf (:func:`check_end_entity`). Raises :class:`IdentityError`.
    """
    try:
        check_end_entity(cert)
    # An extension that does not parse, one twice, or an x400Address/EDIPartyName name:
    # cryptography's DuplicateExtension and UnsupportedGeneralNameType are no ValueError.
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise IdentityError("bad_spiffe_id", f"certificate extensions do not parse: {e}") from e
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise IdentityError("no_uri_san", "certificate has no subjectAltName") from None
    except x509.DuplicateExtension:
        raise IdentityError(
            "multiple_uri_sans", "certificate has more than one subjectAltName extension"
        ) from None
    except (ValueError, x509.UnsupportedGeneralNameType) as e:
        raise IdentityError("bad_spiffe_id", f"certificate extensions do not parse: {e}") from e
    uris = extension.value.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise IdentityError("no_uri_san", "certificate has no URI subjectAltName")
    if len(uris) > 1:
        raise IdentityError("multiple_uri_sans", f"certificate has {len(uris)} URI subjectAltNames")
    identity = parse_spiffe_id(uris[0])
    if identity.trust_domain not in {d.lower() for d in trusted_domains}:
        raise IdentityError(
            "untrusted_domain", f"trust domain {_shown(identity.trust_domain)} is not trusted"
        )
    return identity


@lru_cache(maxsize=IDENTITY_CACHE_SIZE)
def identity_from_der(der: bytes, trusted_domains: frozenset[str]) -> SpiffeID:
    """:func:`identity_from_certificate` for a DER-encoded certificate, remembered.

    A mesh's clients present the same few leaves on every connection, so the
    parse (certificate, extensions, URI) is done once per distinct certificate and
    trust-domain set; the last :data:`IDENTITY_CACHE_SIZE` are kept. A refused
    certificate raises :class:`IdentityError` each time (failures are not cached),
    and one that does not parse raises it with reason ``bad_spiffe_id``.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    # InvalidVersion (an X.509 version other than 1 or 3) is not a ValueError.
    except (ValueError, x509.InvalidVersion) as e:
        raise IdentityError("bad_spiffe_id", f"certificate does not parse: {e}") from e
    return identity_from_certificate(cert, trusted_domains)


def service_spiffe_id(service: ServiceName, datacenter: str, trust_domain: str) -> SpiffeID:
    """The identity Consul issues to ``service`` in ``datacenter`` (trust domain lower-cased)."""
    return SpiffeID(
        trust_domain=trust_domain.lower(),
        namespace=service.namespace,
        datacenter=datacenter,
        name=service.name,
        partition=service.partition or DEFAULT_PARTITION,
    )
