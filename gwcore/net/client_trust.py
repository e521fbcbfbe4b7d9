"""Client certificate trust per trust domain, on full handshakes and on resumptions.

OpenSSL verifies a client's chain against one store holding every trust root of
the site (so a CA rotation, which lists old and new roots side by side, is
hitless). That alone would let any trusted CA vouch for any identity: a peer
cluster's CA could mint ``spiffe://<our-domain>/.../svc/web``. So, like Envoy's
SPIFFE certificate validator, each trust domain has its own *bundle* and a client
certificate is valid only if it chains to the bundle of the trust domain named in
its own URI SAN:

- A root belongs to the trust domain it is *configured* for (a
  :class:`~gwcore.contract.providers.TrustRoot`), never to the one it names itself:
  a peer root without a ``spiffe://`` URI SAN (Vault, cert-manager) must not count
  as local. A root whose ``spiffe://`` URI SAN names another trust domain than the
  configured one is left out of every bundle (:attr:`TrustBundles.refused`).
- After a full handshake, the anchor of the chain OpenSSL built must be in the
  bundle of the leaf's trust domain. If it is not (a cross-signed path), the chain
  is verified again against that bundle alone; failing that: ``wrong_trust_bundle``.
- A resumed session runs no verification in OpenSSL, and its certificate may have
  expired or its root been removed since. So the leaf is verified again, now,
  against the *current* bundle of its trust domain (with the intermediates seen
  when it was first verified): an expired leaf gives ``expired_cert``, a root no
  longer trusted ``untrusted_ca``, as a full handshake would.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from gwcore.contract import pki
from gwcore.contract.providers import TrustRoot

# OpenSSL X509_V_ERR_* codes we name in metrics; anything else is "bad_client_cert".
VERIFY_ERROR_REASONS: dict[int, str] = {
    2: "untrusted_ca",  # unable to get issuer certificate
    9: "cert_not_yet_valid",
    10: "expired_cert",
    18: "untrusted_ca",  # self-signed leaf
    19: "untrusted_ca",  # self-signed certificate in chain
    20: "untrusted_ca",  # unable to get local issuer certificate
    21: "untrusted_ca",  # unable to verify the first certificate
}
#: Leaves whose verified intermediates are remembered for their resumptions.
VERIFIED_CHAINS_SIZE = 4096


def named_domains(root: x509.Certificate) -> frozenset[str]:
    """The trust domains of every ``spiffe://`` URI SAN of ``root``, lower-cased (with or
    without a path); empty when it has none or its SANs do not parse."""
    try:
        uris = pki.uri_sans(root)
    except ValueError:
        return frozenset({""})  # unparsable names: never matches a configured domain
    found = set()
    for uri in uris:
        if uri[:9].lower() == "spiffe://":
            found.add(uri[9:].split("/", 1)[0].lower())
    return frozenset(found)


def misconfigured(root: TrustRoot) -> str | None:
    """Why ``root`` cannot vouch for its configured trust domain (its ``spiffe://`` URI
    SAN names another one), or ``None``."""
    domain = root.trust_domain.lower()
    other = sorted(named_domains(root.certificate) - {domain})
    if other:
        return (
            f"the root names trust domain {other[0]!r} in its spiffe:// URI SAN but is "
            f"configured for {domain!r}"
        )
    return None


def malformed(item: object) -> str | None:
    """Why a certificate provider's ``trust_roots()`` item cannot be used, or ``None``:
    a :class:`TrustRoot` must hold a certificate and a non-empty trust domain without
    surrounding blanks (a root that names no domain could vouch for none, and guessing
    one would widen trust); a bare item (the 0.1 contract) must be a certificate."""
    if not isinstance(item, TrustRoot):
        if isinstance(item, x509.Certificate):
            return None
        return f"an item of type {type(item).__name__} is not a certificate"
    if not isinstance(item.certificate, x509.Certificate):
        return f"TrustRoot.certificate is a {type(item.certificate).__name__}, not a certificate"
    domain = item.trust_domain
    if not isinstance(domain, str) or not domain or domain.strip() != domain:
        return f"TrustRoot.trust_domain is {domain!r}, not a trust domain name"
    return None


class VerifiedChains:
    """The intermediates of leaves verified in a full handshake, by leaf fingerprint
    (bounded, least recently used out). A session ticket carries only the leaf; a
    resumption needs the rest of the path to verify it again."""

    def __init__(self, size: int = VERIFIED_CHAINS_SIZE) -> None:
        self._size = size
        self._chains: OrderedDict[bytes, tuple[crypto.X509, ...]] = OrderedDict()

    def remember(self, leaf_der: bytes, intermediates: Sequence[crypto.X509]) -> None:
        key = hashlib.sha256(leaf_der).digest()
        self._chains[key] = tuple(intermediates)
        self._chains.move_to_end(key)
        while len(self._chains) > self._size:
            self._chains.popitem(last=False)

    def get(self, leaf_der: bytes) -> tuple[crypto.X509, ...]:
        key = hashlib.sha256(leaf_der).digest()
        found = self._chains.get(key)
        if found is None:
            return ()
        self._chains.move_to_end(key)
        return found


@dataclass(frozen=True)
class TrustBundles:
    """The roots of one :class:`~gwcore.net.tls.ServerTLS` snapshot, by trust domain."""

    roots: Mapping[str, tuple[x509.Certificate, ...]]
    ders: Mapping[str, frozenset[bytes]]  # each domain's roots, DER-encoded
    chains: VerifiedChains = field(default_factory=VerifiedChains)
    #: Roots left out because they name another trust domain, with the reason.
    refused: tuple[tuple[TrustRoot, str], ...] = ()
    _stores: dict[str, crypto.X509Store] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, roots: Iterable[TrustRoot], chains: VerifiedChains | None = None
    ) -> TrustBundles:
        """Group ``roots`` by their configured trust domain; a misconfigured root (see
        :func:`misconfigured`) goes to ``refused`` instead, with the reason."""
        grouped: dict[str, list[x509.Certificate]] = {}
        refused: list[tuple[TrustRoot, str]] = []
        for root in roots:
            problem = misconfigured(root)
            if problem is not None:
                refused.append((root, problem))
                continue
            certs = grouped.setdefault(root.trust_domain.lower(), [])
            if root.certificate not in certs:
                certs.append(root.certificate)
        return cls(
            roots={td: tuple(certs) for td, certs in grouped.items()},
            ders={
                td: frozenset(c.public_bytes(serialization.Encoding.DER) for c in certs)
                for td, certs in grouped.items()
            },
            chains=chains if chains is not None else VerifiedChains(),
            refused=tuple(refused),
        )

    def accepted(self) -> list[x509.Certificate]:
        """Every root of every bundle, each once (what OpenSSL's store holds)."""
        out: list[x509.Certificate] = []
        for certs in self.roots.values():
            out.extend(c for c in certs if c not in out)
        return out

    def _store(self, domain: str) -> crypto.X509Store:
        store = self._stores.get(domain)
        if store is None:
            store = crypto.X509Store()
            for root in self.roots.get(domain, ()):
                store.add_cert(crypto.X509.from_cryptography(root))
            self._stores[domain] = store
        return store

    def _verify(
        self, domain: str, leaf: crypto.X509, intermediates: Sequence[crypto.X509]
    ) -> str | None:
        """Verify ``leaf`` now against ``domain``'s bundle alone; a reason, or None."""
        if domain not in self.roots:
            return "wrong_trust_bundle"
        context = crypto.X509StoreContext(self._store(domain), leaf, list(intermediates))
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as e:
            code = e.errors[0] if e.errors else 0
            return VERIFY_ERROR_REASONS.get(code, "bad_client_cert")
        return None

    def still_trusted(self, previous: TrustBundles, domain: str, leaf: crypto.X509) -> str | None:
        """Verify ``leaf``, which ``previous`` (an older snapshot) accepted, against this
        snapshot's bundle of ``domain`` now, with the intermediates ``previous`` saw;
        ``None`` or the reason. A handshake that began before the roots changed ends
        under the new ones (:meth:`gwcore.runtime.recheck.LiveRecheck.accepted`)."""
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)
        return self._verify(domain, leaf, previous.chains.get(der))

    def intermediates(self, leaf: crypto.X509) -> tuple[crypto.X509, ...]:
        """The intermediates remembered for ``leaf`` when it was verified in full (a
        resumed session's own chain holds none)."""
        return self.chains.get(crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf))

    def check(
        self, tls: SSL.Connection, domain: str, leaf: crypto.X509, leaf_der: bytes
    ) -> str | None:
        """Whether the client certificate ``leaf`` (DER ``leaf_der``) of a finished
        handshake chains to the bundle of ``domain`` (its identity's trust domain):
        ``None`` if so, else the reason (see the module docstring). Resumed sessions
        are verified again."""
        verified = tls.get_verified_chain()
        if not verified:
            # A resumption: OpenSSL verified nothing this time.
            return self._verify(domain, leaf, self.chains.get(leaf_der))
        intermediates = verified[1:-1]
        anchor = crypto.dump_certificate(crypto.FILETYPE_ASN1, verified[-1])
        # A path through another domain's root; one to our domain's may still exist.
        if anchor not in self.ders.get(domain, frozenset()) and (
            self._verify(domain, leaf, [*verified[1:]]) is not None
        ):
            return "wrong_trust_bundle"
        self.chains.remember(leaf_der, intermediates)
        return None
