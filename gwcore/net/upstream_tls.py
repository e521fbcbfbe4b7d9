"""TLS and mTLS origination: the gateway as a TLS client of the external service.

:class:`TLSUpstreamProtocol` owns its OpenSSL connection and memory BIOs, like the
downstream side, so the splice treats plain and TLS upstreams alike through
``send``/``send_eof``: a client's half-close becomes a ``close_notify`` (then FIN)
to the service, and the service's ``close_notify`` is passed on as end of stream.

Verification, in order: the chain must verify against the destination's CA
bundle (always); then, unless the destination says "chain only", the expected
name must be among the certificate's SANs — DNS and IP names through
service-identity, a URI (e.g. a SPIFFE ID) by exact match. The expected name is
the ``SNI`` sent unless configured otherwise (Consul's rule, with the separate
knobs its users asked for).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory

from gwcore.contract.providers import LeafCertificate
from gwcore.net.bio import RecordIO, pieces, record_io
from gwcore.net.peer_verify import verify_peer_in_handshake
from gwcore.net.splice import UpstreamProtocol, flush_bio
from gwcore.net.tls import _add_roots
from gwcore.net.upstream import UpstreamConnectError, tcp_endpoint
from gwcore.policy.model import Endpoint

# OpenSSL X509_V_ERR_* codes seen while verifying the service's chain.
_VERIFY_REASONS = {
    2: "tls_untrusted",
    9: "tls_not_yet_valid",
    10: "tls_expired",
    18: "tls_untrusted",
    19: "tls_untrusted",
    20: "tls_untrusted",
    21: "tls_untrusted",
}

# Alerts a server sends when it does not accept our client certificate.
_CLIENT_CERT_ALERTS = ("certificate", "unknown ca", "access denied")

TLS_VERSIONS = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}


@dataclass(frozen=True, slots=True)
class Verification:
    """What to check on the service's certificate beyond its chain."""

    expect_san: str | None  # None: chain only

    def check(self, cert: x509.Certificate) -> str | None:
        """``None`` when the certificate matches, else a human-readable mismatch."""
        expected = self.expect_san
        if expected is None:
            return None
        try:
            if "://" in expected:
                try:
                    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                except x509.ExtensionNotFound:
                    return f"certificate has no SAN; expected URI {expected}"
                uris = san.get_values_for_type(x509.UniformResourceIdentifier)
                if expected not in uris:
                    return f"URI SANs {uris} do not include {expected}"
                if expected[:9].lower() == "spiffe://" and len(uris) != 1:
                    # A SPIFFE identity is exactly one URI SAN (as a client leaf must be):
                    # a second one would make the far end two identities at once.
                    return f"URI SANs {uris}: a SPIFFE identity has exactly one URI SAN"
                return None
            try:
                ipaddress.ip_address(expected)
            except ValueError:
                verify_certificate_hostname(cert, expected)
            else:
                verify_certificate_ip_address(cert, expected)
        except VerificationError as e:
            return f"certificate does not match {expected!r}: {e.errors}"
        except Exception as e:  # e.g. a certificate with no SAN extension at all
            return f"certificate does not match {expected!r}: {type(e).__name__}: {e}"
        return None


def client_context(
    ca_pem_path: str,
    cert_path: str | None,
    key_path: str | None,
    min_version: str = "1.2",
    max_version: str | None = None,
    ciphers: str | None = None,
) -> SSL.Context:
    """A client context that verifies against ``ca_pem_path`` and, for mTLS, presents a leaf.

    Raises ``SSL.Error``/``OSError``/``ValueError`` on unusable material; callers
    keep their previous context in that case.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(TLS_VERSIONS[min_version])
    if max_version:
        ctx.set_max_proto_version(TLS_VERSIONS[max_version])
    if ciphers:
        ctx.set_cipher_list(ciphers.encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.load_verify_locations(ca_pem_path)
    if cert_path and key_path:
        ctx.use_certificate_chain_file(cert_path)
        ctx.use_privatekey_file(key_path)
        ctx.check_privatekey()
    verify_peer_in_handshake(ctx)  # the chain, then the name (TLSUpstreamProtocol.verification)
    # Keep sessions for resumption (we hand them back with set_session).
    ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections hold no record buffers
    return ctx


def mesh_client_context(leaf: LeafCertificate, roots: Sequence[x509.Certificate]) -> SSL.Context:
    """A client context presenting a mesh leaf and verifying against mesh ``roots``.

    For the gateway's own mesh identity (the mesh-gateway hop): the material is in
    memory, from a certificate provider, never read from files. TLS 1.2 at least.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.use_certificate(leaf.certificate)
    ctx.use_privatekey(leaf.key)  # type: ignore[arg-type]
    for extra in leaf.chain[1:]:
        ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    ctx.check_privatekey()
    _add_roots(ctx, roots)
    verify_peer_in_handshake(ctx)  # the chain, then the SPIFFE ID (the connection's verification)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections hold no record buffers
    return ctx


async def connect_tls(
    reactor: Any, endpoint: Endpoint, timeout: float, build: Callable[[], TLSUpstreamProtocol]
) -> TLSUpstreamProtocol:
    """Connect to ``endpoint`` and wait (``timeout`` each) for the TLS handshake and checks.

    Fails with :class:`UpstreamConnectError` when TLS or verification fails; any other
    failure (a timeout, the client leaving) aborts the half-open connection first.
    """
    proto: TLSUpstreamProtocol = await tcp_endpoint(reactor, endpoint, timeout).connect(
        _BuildOne(build)
    )
    ready = proto.ready
    ready.addTimeout(timeout, reactor)
    try:
        await ready
    except UpstreamConnectError:
        raise
    except BaseException:
        proto.transport.abortConnection()
        raise
    return proto


class _BuildOne(Factory):
    noisy = False

    def __init__(self, build: Callable[[], TLSUpstreamProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> TLSUpstreamProtocol:
        return self._build()


class TLSUpstreamProtocol(UpstreamProtocol):
    """An upstream connection that originates TLS; ``ready`` fires after verification."""

    def __init__(
        self,
        context: SSL.Context,
        sni: str | None,
        verification: Verification,
        session: SSL.Session | None = None,
        alpn: bytes | None = None,
    ) -> None:
        self.context = context
        self.sni = sni
        self.verification = verification
        self.session = session
        self.alpn = alpn  # offered to the service: what the client agreed to with us
        self.ready: Deferred[TLSUpstreamProtocol] = Deferred()
        self.tls: SSL.Connection | None = None
        self.io: RecordIO | None = None  # the data-path calls on self.tls (gwcore.net.bio)
        self.verify_error: int | None = None  # the first chain error (peer_verify)
        self.name_mismatch: str | None = None  # the name check's refusal (peer_verify)
        self.handshake_done = False
        self.eof_sent = False
        self.failure_reason: str | None = None
        self.on_session: Callable[[SSL.Session], None] | None = None

    # --- handshake ------------------------------------------------------------

    def connectionMade(self) -> None:
        tls = SSL.Connection(self.context, None)
        tls.set_connect_state()
        tls.set_app_data(self)
        if self.sni:
            tls.set_tlsext_host_name(self.sni.encode("idna"))
        if self.session is not None:
            tls.set_session(self.session)
        if self.alpn:
            tls.set_alpn_protos([self.alpn])
        self.tls, self.io = tls, record_io(tls)
        self._handshake()

    def _handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            self._flush()
            return
        except SSL.Error as e:
            self._flush()  # our alert (bad_certificate for a wrong name) goes out
            if self.name_mismatch is not None:
                self._fail("tls_san_mismatch", self.name_mismatch, alert=True)
                return
            reason = _VERIFY_REASONS.get(self.verify_error or 0, "tls_handshake")
            self._fail(reason, f"TLS handshake with the service failed: {_ssl_text(e)}", alert=True)
            return
        self._flush()
        # A resumed session skips verification: check the name it was verified for again.
        cert = tls.get_peer_certificate(as_cryptography=True)
        mismatch = self.verification.check(cert) if cert is not None else "no certificate"
        if mismatch is not None:
            self._fail("tls_san_mismatch", mismatch)
            return
        self.handshake_done = True
        self.ready.callback(self)

    def _fail(self, reason: str, detail: str, alert: bool = False) -> None:
        self.failure_reason = reason
        if not self.ready.called:
            self.ready.errback(UpstreamConnectError(reason, detail))
        if alert:
            # Our alert (a few bytes, written just now) must reach the service: an abort
            # would drop it with the write buffer. The close is not delayed by the peer.
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    # --- bytes ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        plain: list[bytes] = []  # the whole read's plaintext: one write to the client
        for piece in pieces(data):  # bounded BIO capacity (gwcore.net.bio)
            self._received(piece, plain)
            if self.transport.disconnecting:
                return
        self._to_client(plain)

    def _to_client(self, plain: list[bytes]) -> None:
        down = self.downstream
        if plain and down is not None:
            down.send_to_client(plain[0] if len(plain) == 1 else b"".join(plain))
        plain.clear()

    def _received(self, data: bytes, plain: list[bytes]) -> None:
        """Feed ``data`` to OpenSSL; the plaintext of its whole records goes to ``plain``
        (an end of stream sends what came before it first)."""
        io = self.io
        if io is None:
            return
        if not self.handshake_done:
            io.feed(data)
            self._handshake()
            if not self.handshake_done:
                return
            data = b""  # fed: records that came with the end of the handshake are read below
        try:
            # One record per recv, gathered so the client gets one write per read.
            wrote = io.receive(data, plain)
        except SSL.ZeroReturnError:  # the service's close_notify: end of its stream
            self._to_client(plain)
            self.readConnectionLost()
            wrote = True
        except SSL.Error as e:
            self._to_client(plain)
            self._data_error(e)
            return
        if wrote:  # a KeyUpdate's answer, an alert: records carrying data write nothing
            self._flush()

    def _data_error(self, error: SSL.Error) -> None:
        text = _ssl_text(error)
        # TLS 1.3 servers reject a client certificate only after our handshake ended.
        rejected = "alert" in text and any(k in text for k in _CLIENT_CERT_ALERTS)
        reason = "tls_client_cert_rejected" if rejected else "tls_error"
        self.failure_reason = reason
        if self.downstream is not None:
            self.downstream.upstream_tls_failed(reason, text)
        self.transport.abortConnection()

    def send(self, data: bytes) -> None:
        io = self.io
        if io is None:
            return
        records = io.encrypt(data)  # bounded BIO (gwcore.net.bio)
        if len(records) == 1:  # the usual request: one record, one write
            self.transport.write(records[0])
        else:
            self.transport.writeSequence(records)

    def send_eof(self) -> None:
        tls = self.tls
        if tls is None or self.eof_sent:
            return
        self.eof_sent = True
        with contextlib.suppress(SSL.Error):
            tls.shutdown()
        self._flush()
        self.transport.loseWriteConnection()

    def _flush(self) -> None:
        if self.tls is not None:
            flush_bio(self.tls, self.transport.write)

    def readConnectionLost(self) -> None:
        if not self.handshake_done:
            self._fail(
                "tls_handshake", "the service closed the connection during the TLS handshake"
            )
            return
        if not self.read_closed:
            super().readConnectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.handshake_done and not self.ready.called:
            why = reason.getErrorMessage() if reason is not None else "unknown"
            self.ready.errback(
                UpstreamConnectError(
                    self.failure_reason or "tls_handshake",
                    f"connection lost during the TLS handshake: {why}",
                )
            )
        tls = self.tls
        if tls is not None and self.handshake_done and self.on_session is not None:
            session = tls.get_session()
            if session is not None:
                self.on_session(session)
        super().connectionLost(reason)


def _ssl_text(error: BaseException) -> str:
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list):
        return "; ".join(str(item[-1]) for item in args[0] if item) or repr(error)
    return str(error) or repr(error)
