"""Tests for gwcore.net.tls: ServerTLS snapshots reuse unchanged contexts, the base context
never offers a certificate, and client leaves from any current root verify. Handshakes run
in memory between two pyOpenSSL connections."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from cryptography import x509
from OpenSSL import SSL, crypto

from gwcore.contract import pki
from gwcore.contract.providers import LeafCertificate, TrustRoot
from gwcore.net.tls import ServerTLS, ServerTLSBuilder
from gwcore.policy.model import ServiceName
from gwcore.policy.sni import service_sni
from gwcore.testing import TRUST_DOMAIN, MeshCA

BILLING = ServiceName("billing")
PAYMENTS = ServiceName("payments")


def sni(service: ServiceName) -> str:
    return service_sni(service, "dc1", TRUST_DOMAIN)


@dataclass
class Server:
    """The callbacks a site gives the builder: SNI switches to the route's context."""

    tls: ServerTLS | None = None
    verified: list[tuple[int, int, int]] = field(default_factory=list)  # errnum, depth, ok

    def __post_init__(self) -> None:
        self.builder = ServerTLSBuilder(self.on_servername, self.on_verify)

    def on_servername(self, conn: SSL.Connection) -> None:
        name = conn.get_servername()
        assert self.tls is not None
        ctx = self.tls.context_for(name.decode()) if name else None
        if ctx is not None:
            conn.set_context(ctx)

    def on_verify(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        self.verified.append((errnum, depth, ok))
        return bool(ok)

    def build(
        self, leaves: dict[ServiceName, LeafCertificate], roots: list[x509.Certificate]
    ) -> ServerTLS:
        routes = [(sni(service), service) for service in leaves]
        # Every root here is the site's own trust domain's (as a provider tags it).
        tagged = [TrustRoot(root, TRUST_DOMAIN) for root in roots]
        self.tls, missing = self.builder.build(routes, leaves.get, tagged, self.tls)
        assert missing == []
        return self.tls


class HandshakeFailedError(Exception):
    def __init__(self, side: str, error: SSL.Error) -> None:
        super().__init__(f"{side}: {error}")
        self.side = side


def _pump(source: SSL.Connection, target: SSL.Connection) -> bool:
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        target.bio_write(data)
        moved = True


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Drive both ends until both finished and no bytes are in flight."""
    finished: set[str] = set()
    ends = {"client": client, "server": server}
    for _ in range(20):
        for side, conn in ends.items():
            if side in finished:
                continue
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                continue
            except SSL.Error as e:
                raise HandshakeFailedError(side, e) from e
            finished.add(side)
        moved = _pump(client, server) | _pump(server, client)
        if len(finished) == 2 and not moved:
            return
    raise AssertionError("the in-memory handshake stalled")


def connect(
    server: Server, server_name: str | None, leaf: LeafCertificate | None = None
) -> tuple[SSL.Connection, SSL.Connection]:
    """A client (presenting ``leaf``) and a server connection on the snapshot's base context."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    if leaf is not None:
        ctx.use_certificate(leaf.certificate)
        ctx.use_privatekey(leaf.key)  # type: ignore[arg-type]
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    if server_name is not None:
        client.set_tlsext_host_name(server_name.encode())
    assert server.tls is not None
    server_conn = SSL.Connection(server.tls.base, None)
    server_conn.set_accept_state()
    return client, server_conn


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA()


@pytest.fixture(scope="module")
def other_ca() -> MeshCA:
    return MeshCA()


# --- snapshots and reuse ----------------------------------------------------------------


def test_unchanged_leaf_and_roots_reuse_the_same_context_objects(ca: MeshCA) -> None:
    server = Server()
    leaves = {BILLING: ca.leaf("billing"), PAYMENTS: ca.leaf("payments")}
    first = server.build(leaves, [ca.cert])
    second = server.build(leaves, [ca.cert])
    assert second is not first
    assert second.base is first.base
    for service in leaves:
        assert second.context_for(sni(service)) is first.context_for(sni(service))


def test_every_listener_context_releases_idle_record_buffers(ca: MeshCA) -> None:
    """Memory per idle connection: every context (base and per route) sets
    SSL_MODE_RELEASE_BUFFERS, so an idle connection holds no 34 KiB of record buffers
    (``SSL_CTX_set_mode(ctx, 0)`` returns the mode in force)."""
    server = Server()
    built = server.build({BILLING: ca.leaf("billing")}, [ca.cert])
    for ctx in (built.base, built.context_for(sni(BILLING))):
        assert ctx is not None
        assert ctx.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


def test_roots_in_another_order_count_as_unchanged(ca: MeshCA, other_ca: MeshCA) -> None:
    server = Server()
    leaves = {BILLING: ca.leaf("billing")}
    first = server.build(leaves, [ca.cert, other_ca.cert])
    second = server.build(leaves, [other_ca.cert, ca.cert])
    assert second.base is first.base
    assert second.context_for(sni(BILLING)) is first.context_for(sni(BILLING))


def test_a_rotated_leaf_rebuilds_only_its_own_context(ca: MeshCA) -> None:
    server = Server()
    leaves = {BILLING: ca.leaf("billing"), PAYMENTS: ca.leaf("payments")}
    first = server.build(leaves, [ca.cert])
    rotated = ca.leaf("billing")
    second = server.build({**leaves, BILLING: rotated}, [ca.cert])
    assert second.context_for(sni(BILLING)) is not first.context_for(sni(BILLING))
    assert second.context_for(sni(PAYMENTS)) is first.context_for(sni(PAYMENTS))
    assert second.leaves[sni(BILLING)] is rotated


def test_changed_roots_rebuild_every_context(ca: MeshCA, other_ca: MeshCA) -> None:
    server = Server()
    leaves = {BILLING: ca.leaf("billing"), PAYMENTS: ca.leaf("payments")}
    first = server.build(leaves, [ca.cert])
    second = server.build(leaves, [ca.cert, other_ca.cert])
    assert second.base is not first.base
    for service in leaves:
        assert second.context_for(sni(service)) is not first.context_for(sni(service))
    assert second.roots == (ca.cert, other_ca.cert)


def test_a_route_without_a_leaf_is_reported_missing_and_left_out(ca: MeshCA) -> None:
    builder = Server().builder
    leaves = {BILLING: ca.leaf("billing")}
    routes = [(sni(BILLING), BILLING), (sni(PAYMENTS), PAYMENTS)]
    tls, missing = builder.build(routes, leaves.get, [TrustRoot(ca.cert, TRUST_DOMAIN)])
    assert missing == [sni(PAYMENTS)]
    assert tls.context_for(sni(PAYMENTS)) is None
    assert set(tls.by_sni) == set(tls.leaves) == {sni(BILLING)}


# --- handshakes in memory ---------------------------------------------------------------


def test_a_known_sni_switches_to_the_route_context_and_presents_its_leaf(ca: MeshCA) -> None:
    """Positive control for the refusals below: the same setup does handshake."""
    server = Server()
    leaf = ca.leaf("billing")
    server.build({BILLING: leaf}, [ca.cert])
    client, server_conn = connect(server, sni(BILLING), ca.leaf("web"))
    handshake(client, server_conn)
    presented = client.get_peer_certificate(as_cryptography=True)
    assert presented == leaf.certificate
    assert pki.uri_sans(presented)[0].endswith("/svc/billing")


@pytest.mark.parametrize("server_name", ["unknown.example", None], ids=["unknown", "no-sni"])
def test_the_base_context_has_no_certificate_so_the_handshake_fails(
    ca: MeshCA, server_name: str | None
) -> None:
    server = Server()
    server.build({BILLING: ca.leaf("billing")}, [ca.cert])
    client, server_conn = connect(server, server_name, ca.leaf("web"))
    with pytest.raises(HandshakeFailedError) as failed:
        handshake(client, server_conn)
    assert failed.value.side == "server"
    assert client.get_peer_certificate() is None


@pytest.mark.parametrize("issuer", ["ca", "other_ca"])
def test_client_leaves_from_every_current_root_verify(
    ca: MeshCA, other_ca: MeshCA, issuer: str
) -> None:
    """Both providers' roots are trusted at once, so a CA rotation is hitless; the verify
    callback hears of refused certificates only (gwcore.net.client_verify)."""
    server = Server()
    server.build({BILLING: ca.leaf("billing")}, [ca.cert, other_ca.cert])
    client_ca = {"ca": ca, "other_ca": other_ca}[issuer]
    client, server_conn = connect(server, sni(BILLING), client_ca.leaf("web"))
    handshake(client, server_conn)
    assert server_conn.get_peer_certificate(as_cryptography=True) is not None
    assert server.verified == []  # a chain OpenSSL accepts costs no Python call


def test_a_client_leaf_from_an_untrusted_ca_is_refused(ca: MeshCA) -> None:
    server = Server()
    server.build({BILLING: ca.leaf("billing")}, [ca.cert])
    client, server_conn = connect(server, sni(BILLING), MeshCA().leaf("web"))
    with pytest.raises(HandshakeFailedError) as failed:
        handshake(client, server_conn)
    assert failed.value.side == "server"
    assert (20, 0, 0) in server.verified  # unable to get local issuer certificate


def test_a_client_without_a_certificate_is_refused(ca: MeshCA) -> None:
    server = Server()
    server.build({BILLING: ca.leaf("billing")}, [ca.cert])
    client, server_conn = connect(server, sni(BILLING), leaf=None)
    with pytest.raises(HandshakeFailedError) as failed:
        handshake(client, server_conn)
    assert failed.value.side == "server"
