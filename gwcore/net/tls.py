"""OpenSSL contexts for the downstream (mesh-facing) side of a terminating site.

A :class:`ServerTLS` is an immutable snapshot: one *base* context, which holds no
certificate at all, and one context per route (SNI) holding that destination's
leaf. Every connection starts on the base context; the servername callback
switches it to the route's context. A ClientHello with an unknown or missing SNI
therefore never gets a certificate: OpenSSL aborts the handshake itself.

Client certificates are required and verified against every current trust root
(Consul validates against the concatenation of all roots, so CA rotation is
hitless); :mod:`gwcore.net.client_trust` then requires the chain to end in
the bundle of the client's own trust domain. New material means a new
snapshot; connections keep the one they started with. Contexts are cached per
(SNI, leaf fingerprint, roots digest), so a route-table change rebuilds only what
changed. Each SNI has its own context, session ID context and ticket keys, so a
session resumes only under the name it was made for (gwcore.net.first_hello).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from gwcore.contract.providers import LeafCertificate, TrustRoot
from gwcore.net.client_trust import TrustBundles, VerifiedChains
from gwcore.net.client_verify import ClientVerifier, VerifyCallback
from gwcore.policy.model import ServiceName

VERIFY_CLIENT = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
SESSION_ID_CONTEXT = b"tgw"


ServernameCallback = Callable[[SSL.Connection], None]
AlpnCallback = Callable[[SSL.Connection, list[bytes]], Any]

# What a terminating gateway may agree to with the client, by destination protocol,
# in our order of preference. A TCP destination agrees to nothing (the client carries
# on without ALPN, as with Consul's TCP filter chains). An http2/grpc destination
# prefers h2 and also serves a client that offers only http/1.1 (as Envoy's HTTP
# connection manager with codec AUTO, which Consul configures for those protocols):
# the L7 path translates between the two.
ALPN_BY_PROTOCOL: dict[str, tuple[bytes, ...]] = {
    "http": (b"http/1.1",),
    "http2": (b"h2", b"http/1.1"),
    "grpc": (b"h2", b"http/1.1"),
}


def roots_digest(roots: Sequence[x509.Certificate | TrustRoot]) -> bytes:
    """A digest of the roots, and of the trust domain each is configured for."""
    h = hashlib.sha256()
    parts = []
    for r in roots:
        if isinstance(r, TrustRoot):
            td, cert = r.trust_domain.lower().encode(), r.certificate
        else:
            td, cert = b"", r
        parts.append(hashlib.sha256(td).digest() + cert.public_bytes(serialization.Encoding.DER))
    for part in sorted(parts):
        h.update(part)
    return h.digest()


def _base_settings(ctx: SSL.Context, verify: ClientVerifier, session_lifetime: float) -> None:
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_COMPRESSION
    )
    verify.install(ctx, VERIFY_CLIENT)  # Python hears of failed checks only (client_verify)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    # How long a session (TLS 1.2 cache entry or ticket, TLS 1.3 ticket lifetime)
    # may be resumed; a resumption also re-verifies the client's certificate now
    # (gwcore.net.client_trust), so an expired leaf is refused whatever this is.
    ctx.set_timeout(max(1, int(session_lifetime)))
    # An idle connection gives its record buffers back (about 34 KiB each; HAProxy
    # and nginx set this too): memory per idle connection, not per connection ever.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)


def _add_roots(ctx: SSL.Context, roots: Iterable[x509.Certificate]) -> None:
    store = ctx.get_cert_store()
    assert store is not None
    for root in roots:
        store.add_cert(crypto.X509.from_cryptography(root))


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """One immutable set of server contexts (see module docstring)."""

    base: SSL.Context
    by_sni: dict[str, SSL.Context]
    leaves: dict[str, LeafCertificate]
    roots: tuple[x509.Certificate, ...]
    roots_key: bytes
    trust: TrustBundles
    _cache: dict[tuple[str, bytes, bytes], SSL.Context] = field(default_factory=dict, repr=False)

    def context_for(self, sni: str) -> SSL.Context | None:
        return self.by_sni.get(sni)


class ServerTLSBuilder:
    """Builds :class:`ServerTLS` snapshots for one site, reusing unchanged contexts."""

    def __init__(
        self,
        on_servername: ServernameCallback,
        on_verify: VerifyCallback,
        on_alpn: AlpnCallback | None = None,
        *,
        trust_domain: str = "",
        session_lifetime: float = 3600.0,
    ) -> None:
        self._on_servername = on_servername
        self._verifier = ClientVerifier(on_verify)  # called for refused certificates only
        self._on_alpn = on_alpn
        self._trust_domain = trust_domain
        self._session_lifetime = session_lifetime
        self._chains = VerifiedChains()

    def _context(
        self, leaf: LeafCertificate | None, roots: Sequence[x509.Certificate], sni: str = ""
    ) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_METHOD)
        _base_settings(ctx, self._verifier, self._session_lifetime)
        _add_roots(ctx, roots)
        if self._on_alpn is not None:
            # Called after the servername callback, on the route's context.
            ctx.set_alpn_select_callback(self._on_alpn)
        # A connection starts on its first hello's route context (gwcore.net.first_hello),
        # so every context routes; and a session made for one SNI resumes only there.
        ctx.set_tlsext_servername_callback(self._on_servername)
        if leaf is None:
            return ctx
        ctx.set_session_id(SESSION_ID_CONTEXT + b":" + hashlib.sha256(sni.encode()).digest()[:24])
        ctx.use_certificate(leaf.certificate)
        ctx.use_privatekey(leaf.key)  # type: ignore[arg-type]
        for extra in leaf.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.check_privatekey()
        return ctx

    def build(
        self,
        routes: Iterable[tuple[str, ServiceName]],
        leaf_for: Callable[[ServiceName], LeafCertificate | None],
        tagged: Sequence[TrustRoot],
        previous: ServerTLS | None = None,
    ) -> tuple[ServerTLS, list[str]]:
        """Contexts for every (sni, service) route, verifying clients against the
        bundles of ``tagged`` (roots by configured trust domain); returns the snapshot
        and the SNIs left out because no leaf was available (those routes cannot
        handshake). Roots refused by the bundles are in ``snapshot.trust.refused``."""
        key = roots_digest(tagged)
        reuse = previous is not None and previous.roots_key == key
        cache: dict[tuple[str, bytes, bytes], SSL.Context] = (
            dict(previous._cache) if reuse and previous else {}
        )
        trust = previous.trust if reuse and previous else TrustBundles.build(tagged, self._chains)
        roots = trust.accepted()
        base = previous.base if reuse and previous else self._context(None, roots)
        by_sni: dict[str, SSL.Context] = {}
        leaves: dict[str, LeafCertificate] = {}
        missing: list[str] = []
        used: set[tuple[str, bytes, bytes]] = set()
        for sni, service in routes:
            leaf = leaf_for(service)
            if leaf is None:
                missing.append(sni)
                continue
            ck = (sni, leaf.fingerprint, key)
            ctx = cache.get(ck)
            if ctx is None:
                ctx = self._context(leaf, roots, sni)
                cache[ck] = ctx
            used.add(ck)
            by_sni[sni] = ctx
            leaves[sni] = leaf
        cache = {k: v for k, v in cache.items() if k in used}
        return ServerTLS(base, by_sni, leaves, tuple(roots), key, trust, cache), missing
