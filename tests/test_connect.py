"""``tgw connect``'s pieces: the gateway address derived from a site's listen string, and
the client TLS a mesh sidecar would use (in-memory handshakes over pyOpenSSL memory BIOs)."""

from __future__ import annotations

import contextlib

import pytest
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from gwcore.connect import MeshClientTLS, gateway_client_endpoint, uri_sans
from gwcore.policy.model import SpiffeID
from gwcore.providers import LeafCertificate
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import sni_for

# --- gateway_client_endpoint ----------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("tcp:8443:interface=127.0.0.1", "127.0.0.1", 8443),
        ("tcp:port=8443:interface=10.0.0.1", "10.0.0.1", 8443),
        ("tcp:interface=10.0.0.2:port=8443", "10.0.0.2", 8443),
        ("tcp:8443", "127.0.0.1", 8443),
        ("tcp:8443:interface=0.0.0.0", "127.0.0.1", 8443),
        ("tcp:8443:interface=127.0.0.1:backlog=50", "127.0.0.1", 8443),
        ("tcp6:8443", "::1", 8443),
        (r"tcp6:8443:interface=\:\:1", "::1", 8443),
        (r"tcp6:port=8443:interface=fd00\:\:7", "fd00::7", 8443),
    ],
)
def test_client_endpoint_reaches_the_address_the_site_listens_on(
    listen: str, host: str, port: int
) -> None:
    """The derived client string, parsed by Twisted, connects to the site's own address
    (a wildcard or absent interface means loopback; escaped IPv6 interfaces stay whole)."""
    reactor = MemoryReactor()
    clientFromString(reactor, gateway_client_endpoint(listen)).connect(Factory())
    assert reactor.tcpClients[0][:2] == (host, port)


@pytest.mark.parametrize(
    "listen",
    [
        "unix:/run/tgw.sock",
        "ssl:8443",
        "systemd:domain=INET:index=0",
        "tcp:interface=127.0.0.1",
        "tcp:port=https:interface=127.0.0.1",
        "tcp:",
    ],
)
def test_client_endpoint_refuses_what_it_cannot_derive(listen: str) -> None:
    """Non-TCP listeners and listen strings without a numeric port ask for --gateway."""
    with pytest.raises(ValueError, match="--gateway"):
        gateway_client_endpoint(listen)


# --- MeshClientTLS and uri_sans ---------------------------------------------------------


def server_context(leaf: LeafCertificate, ca: MeshCA, seen_sni: list[bytes | None]) -> SSL.Context:
    """A gateway-like server: presents ``leaf``, requires a client certificate from ``ca``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate(leaf.certificate)
    ctx.use_privatekey(leaf.key)
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(ca.cert))
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, err, depth, ok: ok
    )
    ctx.set_tlsext_servername_callback(lambda conn: seen_sni.append(conn.get_servername()))
    return ctx


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Pump bytes between two memory-BIO connections until both finish (bounded rounds)."""
    client.set_connect_state()
    server.set_accept_state()
    finished: set[str] = set()
    for _ in range(20):
        for name, conn in (("client", client), ("server", server)):
            if name in finished:
                continue
            try:
                conn.do_handshake()
                finished.add(name)
            except SSL.WantReadError:
                pass
        for source, target in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                target.bio_write(source.bio_read(1 << 16))
        if finished == {"client", "server"}:
            return
    raise AssertionError(f"handshake did not finish; finished: {sorted(finished)}")


def test_mesh_client_presents_its_leaf_sends_the_sni_and_verifies_the_gateway() -> None:
    """Against a gateway presenting billing's mesh leaf, the client completes mTLS: the
    gateway sees the Consul SNI and web's SPIFFE URI, the client sees billing's."""
    ca = MeshCA()
    sni = sni_for("billing")
    seen_sni: list[bytes | None] = []
    server = SSL.Connection(server_context(ca.leaf("billing"), ca, seen_sni), None)
    app_data = object()
    client = MeshClientTLS(ca.leaf("web"), [ca.cert], sni).clientConnectionForTLS(app_data)
    assert client.get_app_data() is app_data

    handshake(client, server)

    assert seen_sni == [sni.encode()]
    web = SpiffeID(TRUST_DOMAIN, "default", "dc1", "web").uri
    billing = SpiffeID(TRUST_DOMAIN, "default", "dc1", "billing").uri
    assert uri_sans(server.get_peer_certificate(as_cryptography=True)) == [web]
    assert uri_sans(client.get_peer_certificate(as_cryptography=True)) == [billing]


def test_mesh_client_refuses_a_gateway_from_another_ca() -> None:
    """A server leaf not signed by the mesh roots fails the client's chain check."""
    mesh, stranger = MeshCA(), MeshCA()
    server = SSL.Connection(server_context(stranger.leaf("billing"), mesh, []), None)
    client = MeshClientTLS(mesh.leaf("web"), [mesh.cert], sni_for("billing"))
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        handshake(client.clientConnectionForTLS(None), server)


@pytest.mark.parametrize(
    ("uris", "expected"),
    [
        ([], []),
        (
            ["spiffe://td.consul/ns/default/dc/dc1/svc/web"],
            ["spiffe://td.consul/ns/default/dc/dc1/svc/web"],
        ),
        (
            ["spiffe://a.consul/x", "spiffe://b.consul/y"],
            ["spiffe://a.consul/x", "spiffe://b.consul/y"],
        ),
    ],
    ids=["no-uri", "one", "two-in-order"],
)
def test_uri_sans_lists_uri_names_in_order(uris: list[str], expected: list[str]) -> None:
    """``uri_sans`` returns every URI SAN in order, and nothing for a DNS-only certificate."""
    leaf = MeshCA().leaf_with_uris(uris)
    assert uri_sans(leaf.certificate) == expected
