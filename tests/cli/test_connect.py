"""``tgw connect``'s pieces: the gateway address derived from a site's listen string; the
proxy end to end over loopback (half-closes both ways, the gateway's identity checked in
the handshake, the leaf renewed from its provider)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from gwcore.cli.connect import (
    RETRY_AFTER,
    ConnectFactory,
    LeafSource,
    gateway_client_endpoint,
    uri_sans,
)
from gwcore.contract.providers import LeafCertificate
from gwcore.policy.model import SpiffeID
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import Upstream, in_thread, read_all, sleep, sni_for

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


# --- the proxy, end to end over loopback ---------------------------------------------
#
# The gateway is played by a blocking pyOpenSSL server in a thread (tests.harness.Upstream)
# that requires a client certificate from the mesh CA and records the SNI, the client's
# identity and leaf serial, or how its handshake failed; the proxy runs in the test's
# reactor; the local client is a plain socket in a thread.


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


def tls_read_to_end(conn: SSL.Connection) -> bytes:
    """Read until the peer's close_notify (or its FIN); everything read."""
    data = b""
    for _ in range(1000):
        try:
            data += conn.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            return data
    raise AssertionError("no end of stream")


def gateway(ca: MeshCA, leaf: LeafCertificate, behaviour: Callable[..., None]) -> Upstream:
    """The fake gateway: handshake, record, then ``behaviour(conn, sock, up)``."""
    seen_sni: list[bytes | None] = []
    ctx = server_context(leaf, ca, seen_sni)

    def handle(sock: socket.socket, up: Upstream) -> None:
        # Blocking (pyOpenSSL has no socket timeouts); the client side's reads are bounded.
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except SSL.Error as e:
            up.results.append({"error": str(e), "sni": seen_sni[-1:]})
            return
        peer = conn.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        up.results.append(
            {"sni": seen_sni[-1], "client": uri_sans(peer), "serial": peer.serial_number}
        )
        behaviour(conn, sock, up)

    return Upstream(handle)


def reply_after_client_eof(conn: SSL.Connection, sock: socket.socket, up: Upstream) -> None:
    """Read the whole request (to close_notify), then answer and close."""
    request = tls_read_to_end(conn)
    conn.sendall(b"reply to " + request)
    conn.shutdown()
    sock.shutdown(socket.SHUT_WR)


def talk_first_then_listen(conn: SSL.Connection, sock: socket.socket, up: Upstream) -> None:
    """Send a banner and end our stream (close_notify, FIN), then read what still comes."""
    conn.sendall(b"banner")
    conn.shutdown()
    sock.shutdown(socket.SHUT_WR)
    up.results.append({"after_eof": tls_read_to_end(conn)})


async def recorded(up: Upstream) -> list[dict]:
    """The fake gateway's records, once it has made one: its thread records a failed
    handshake only after the proxy has already closed the local connection."""
    for _ in range(500):
        if up.results:
            break
        await sleep(0.01)
    return up.results


class Proxy:
    """``tgw connect``'s factory listening on 127.0.0.1 in this reactor."""

    def __init__(
        self,
        ca: MeshCA,
        up: Upstream,
        load: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
        upstream: str = "billing",
    ) -> None:
        self.loads = 0

        def default_load() -> Any:
            return ca.leaf("web"), [ca.cert]

        def counted() -> Any:
            self.loads += 1
            return (load or default_load)()

        self.source = LeafSource(counted, clock)
        expected = SpiffeID(TRUST_DOMAIN, "default", "dc1", upstream).uri
        factory = ConnectFactory(
            TCP4ClientEndpoint(reactor, "127.0.0.1", up.port),
            self.source,
            sni_for(upstream),
            expected,
            reactor,
        )
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)


@pytest.fixture
def closing(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """Register a server or listening port to close at teardown."""

    def register(thing: Any) -> Any:
        close = getattr(thing, "close", None) or thing.port.stopListening
        request.addfinalizer(close)
        return thing

    return register


def request_then_half_close(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request``, shut down our write side, read the reply to the end."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def read_to_eof_then_send(address: tuple[str, int], late: bytes) -> bytes:
    """Read until the proxy passes the gateway's end of stream on, then still send ``late``."""
    with socket.create_connection(address, timeout=10) as sock:
        got = read_all(sock)
        sock.sendall(late)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        assert sock.recv(1) == b""
        return got


@pytest_twisted.ensureDeferred
async def test_client_half_close_reaches_the_gateway_and_the_reply_comes_back(closing) -> None:
    """A client that sends its request and shuts down its write side gets the reply: its FIN
    becomes close_notify to the gateway, which answers after reading to the end. The
    gateway saw the Consul SNI and web's SPIFFE ID."""
    ca = MeshCA()
    up = closing(gateway(ca, ca.leaf("billing"), reply_after_client_eof))
    proxy = closing(Proxy(ca, up))
    reply = await in_thread(request_then_half_close, proxy.address, b"GET /")
    assert reply == b"reply to GET /", (up.results, up.errors)
    (seen,) = await recorded(up)
    assert seen["sni"] == sni_for("billing").encode()
    assert seen["client"] == [SpiffeID(TRUST_DOMAIN, "default", "dc1", "web").uri]
    assert up.errors == []


@pytest_twisted.ensureDeferred
async def test_gateway_half_close_reaches_the_client_who_can_still_send(closing) -> None:
    """The gateway ending its stream (close_notify, FIN) becomes a FIN to the client, and
    what the client sends afterwards still reaches the gateway (then both close)."""
    ca = MeshCA()
    up = closing(gateway(ca, ca.leaf("billing"), talk_first_then_listen))
    proxy = closing(Proxy(ca, up))
    got = await in_thread(read_to_eof_then_send, proxy.address, b"still talking")
    assert got == b"banner"
    assert await in_thread(up.done.wait, 10)  # the gateway thread finished reading
    assert up.results[-1] == {"after_eof": b"still talking"}
    assert up.errors == []


@pytest_twisted.ensureDeferred
async def test_gateway_with_another_identity_is_refused_inside_the_handshake(closing) -> None:
    """A gateway presenting another service's (validly signed) leaf gets a bad_certificate
    alert and never our certificate; the client's connection is closed with nothing."""
    ca = MeshCA()
    up = closing(gateway(ca, ca.leaf("ledger"), reply_after_client_eof))
    proxy = closing(Proxy(ca, up))
    reply = await in_thread(request_then_half_close, proxy.address, b"GET /")
    assert reply == b""
    (seen,) = await recorded(up)
    assert "bad certificate" in seen["error"], seen


@pytest_twisted.ensureDeferred
async def test_gateway_from_another_ca_is_refused(closing) -> None:
    """A gateway leaf not signed by the mesh roots fails the chain check: nothing is sent."""
    mesh, stranger = MeshCA(), MeshCA()
    up = closing(gateway(mesh, stranger.leaf("billing"), reply_after_client_eof))
    proxy = closing(Proxy(mesh, up))
    assert await in_thread(request_then_half_close, proxy.address, b"GET /") == b""
    (seen,) = await recorded(up)
    assert "error" in seen and "client" not in seen


def echo_once(conn: SSL.Connection, sock: socket.socket, up: Upstream) -> None:
    reply_after_client_eof(conn, sock, up)


@pytest_twisted.ensureDeferred
async def test_leaf_is_renewed_from_its_provider_after_half_its_lifetime(closing) -> None:
    """With a 1 h leaf and a controlled clock: connections before the half-way point use
    the first leaf (one load); the first connection after it loads and presents a new leaf
    from the same provider, which the gateway accepts."""
    ca = MeshCA()
    now = [time.time()]
    up = closing(gateway(ca, ca.leaf("billing"), echo_once))

    def load() -> Any:  # minted at the real time: the gateway checks validity with it
        return ca.leaf("web", valid_for=3600), [ca.cert]

    proxy = closing(Proxy(ca, up, load=load, clock=lambda: now[0]))
    for payload in (b"one", b"two"):
        assert await in_thread(request_then_half_close, proxy.address, payload) == (
            b"reply to " + payload
        )
    now[0] += 1750  # still before half of 3600 s (the leaf's notBefore is now - 60 s)
    assert await in_thread(request_then_half_close, proxy.address, b"three") == b"reply to three"
    assert proxy.loads == 1
    first = up.results[0]["serial"]
    assert [r["serial"] for r in up.results] == [first] * 3

    now[0] += 100  # past half-way: renewed at the next connection
    assert await in_thread(request_then_half_close, proxy.address, b"four") == b"reply to four"
    assert proxy.loads == 2 and proxy.source.renewals == 1
    assert up.results[-1]["serial"] != first
    assert up.results[-1]["client"] == [SpiffeID(TRUST_DOMAIN, "default", "dc1", "web").uri]


def test_a_provider_that_fails_at_renewal_keeps_the_current_leaf_and_is_asked_again() -> None:
    """A renewal that fails keeps the still-valid leaf; the provider is asked again only
    RETRY_AFTER seconds later, then its fresh leaf is used."""
    ca = MeshCA()
    now = [1_000_000.0]
    answers: list[Any] = []

    def load() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    t0 = time.time()
    answers.append((ca.leaf("web", valid_for=3600, now=t0), [ca.cert]))
    now[0] = t0
    source = LeafSource(load, lambda: now[0])
    first = source.context()
    now[0] = t0 + 2000
    answers.append(OSError("provider down"))
    assert source.context() is first  # failed: kept
    now[0] += RETRY_AFTER - 1
    assert source.context() is first and answers == []  # not asked again yet
    now[0] += 1
    answers.append((ca.leaf("web", valid_for=3600, now=now[0]), [ca.cert]))
    assert source.context() is not first
    assert source.renewals == 1 and answers == []


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
