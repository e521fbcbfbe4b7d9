"""gwcore.net.fasttcp: immediate writes and big reads over real loopback sockets, with
Twisted's buffering, flow control and errors still in charge when the kernel is full."""

from __future__ import annotations

import hashlib
import random

import pytest
import pytest_twisted
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from gwcore.net import fasttcp
from tests.harness import free_port, sleep


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def pair() -> tuple[Collect, Collect, object]:
    servers: list[Collect] = []

    def build(addr: object) -> Collect:
        proto = Collect()
        servers.append(proto)
        return proto

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = await fasttcp.listen(reactor, "tcp:0:interface=127.0.0.1", factory)
    client = await fasttcp.TCPClientEndpoint(reactor, "127.0.0.1", port.getHost().port, 5).connect(
        Factory.forProtocol(Collect)
    )
    while not servers:
        await sleep(0.01)
    return client, servers[0], port


@pytest.mark.parametrize(
    ("description", "parsed"),
    [
        ("tcp:8443:interface=127.0.0.1", (8443, "127.0.0.1", 50)),
        ("tcp:port=8443:interface=127.0.0.1:backlog=128", (8443, "127.0.0.1", 128)),
        ("tcp6:8443:interface=\\:\\:1", (8443, "::1", 50)),
        ("tcp6:8443", (8443, "::", 50)),
        ("tcp:8443", (8443, "", 50)),
        ("unix:/tmp/x.sock", None),
        ("tcp:8443:interface=127.0.0.1:unknown=1", None),
        ("systemd:domain=INET:index=0", None),
    ],
)
def test_endpoint_strings_we_handle_and_those_left_to_twisted(description, parsed):
    """tcp/tcp6 strings get our transports; anything else (or unknown) goes to Twisted."""
    assert fasttcp.parse_tcp(description) == parsed


@pytest_twisted.ensureDeferred
async def test_a_write_with_nothing_queued_goes_out_at_once():
    """Both sides use our transports, and a small write leaves nothing queued in Python."""
    client, server, port = await pair()
    assert isinstance(client.transport, fasttcp.Client)
    assert isinstance(server.transport, fasttcp.Server)
    client.transport.write(b"hello")
    assert client.transport.dataBuffer == b"" and client.transport._tempDataLen == 0
    while bytes(server.data) != b"hello":
        await sleep(0.01)
    client.transport.loseConnection()
    await server.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_refuses_is_queued_and_arrives_in_order():
    """With the reader paused, a big write fills the kernel buffers; the rest is queued
    by Twisted and every byte arrives, in order, once the reader resumes."""
    client, server, port = await pair()
    server.transport.pauseProducing()
    payload = random.Random(3).randbytes(16 * 1024 * 1024)
    client.transport.write(payload)
    queued = len(client.transport.dataBuffer) + client.transport._tempDataLen
    assert 0 < queued < len(payload)
    server.transport.resumeProducing()
    for _ in range(2000):
        if len(server.data) == len(payload):
            break
        await sleep(0.01)
    assert hashlib.sha256(server.data).digest() == hashlib.sha256(payload).digest()
    client.transport.loseConnection()
    await server.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_sequence_goes_out_in_one_call_and_what_is_refused_is_queued_in_order():
    """writeSequence with nothing queued leaves nothing in Python when the kernel takes
    it all; with the reader paused, a 16 MiB sequence of pieces fills the kernel
    buffers, the rest is queued, then a second sequence (more pieces than one sendmsg
    takes) queues behind it; every byte arrives in order once the reader resumes."""
    client, server, port = await pair()
    client.transport.writeSequence([b"one ", b"two ", b"three"])
    assert client.transport.dataBuffer == b"" and client.transport._tempDataLen == 0
    while bytes(server.data) != b"one two three":
        await sleep(0.01)
    server.data.clear()
    server.transport.pauseProducing()
    rng = random.Random(4)
    first = [rng.randbytes(rng.choice([1, 700, 16 * 1024 + 22, 65536])) for _ in range(900)]
    second = [rng.randbytes(rng.choice([1, 300])) for _ in range(1500)]  # > IOV_MAX pieces
    client.transport.writeSequence(first)
    queued = len(client.transport.dataBuffer) + client.transport._tempDataLen
    assert 0 < queued < sum(map(len, first))
    client.transport.writeSequence(second)
    payload = b"".join(first + second)
    server.transport.resumeProducing()
    for _ in range(2000):
        if len(server.data) == len(payload):
            break
        await sleep(0.01)
    assert hashlib.sha256(server.data).digest() == hashlib.sha256(payload).digest()
    client.transport.loseConnection()
    await server.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refused_connect_fails_the_deferred():
    """A refused connect errbacks with Twisted's ConnectionRefusedError."""
    endpoint = fasttcp.TCPClientEndpoint(reactor, "127.0.0.1", free_port(), 5)
    with pytest.raises(error.ConnectionRefusedError):
        await endpoint.connect(Factory.forProtocol(Collect))


@pytest_twisted.ensureDeferred
async def test_non_tcp_endpoints_fall_back_to_twisted(tmp_path):
    """A unix: listener is Twisted's own, so every endpoint type keeps working."""
    port = await fasttcp.listen(
        reactor, f"unix:{tmp_path / 's.sock'}", Factory.forProtocol(Collect)
    )
    assert not isinstance(port, fasttcp.Port)
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connected_client_keeps_its_read_registration(monkeypatch):
    """Once a connect completes the socket only drops its write registration (Twisted
    unregistered it for reading too and registered it again: three epoll_ctl for one);
    the connection then reads and writes as any other."""
    removed: list[object] = []
    original = reactor.removeReader

    def remove_reader(selectable):
        removed.append(selectable)
        return original(selectable)

    monkeypatch.setattr(reactor, "removeReader", remove_reader)
    client, server, port = await pair()
    assert not [s for s in removed if isinstance(s, fasttcp.Client)]
    assert client.transport in reactor.getReaders()
    assert client.transport not in reactor.getWriters()
    server.transport.write(b"over the new connection")
    while bytes(client.data) != b"over the new connection":
        await sleep(0.01)
    client.transport.loseConnection()
    await server.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connect_to_an_ip_literal_starts_before_connect_returns(monkeypatch):
    """The SYN to an IP literal is sent inside ``endpoint.connect()`` (the socket has its
    local port already), not a reactor turn later through a ``callLater(0)``; the
    connection then completes and carries bytes as any other."""
    accepted: list[Collect] = []

    def build(addr: object) -> Collect:
        accepted.append(Collect())
        return accepted[-1]

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = await fasttcp.listen(reactor, "tcp:0:interface=127.0.0.1", factory)
    connecting: list[object] = []
    client_factory = Factory.forProtocol(Collect)
    original = fasttcp.Connector.connect

    def connect(self: fasttcp.Connector) -> None:
        original(self)
        connecting.append(self.transport)

    monkeypatch.setattr(fasttcp.Connector, "connect", connect)
    endpoint = fasttcp.TCPClientEndpoint(reactor, "127.0.0.1", port.getHost().port, 5)
    d = endpoint.connect(client_factory)
    (transport,) = connecting
    assert transport.socket.getsockname()[1] != 0  # connect() has been called on it
    assert transport.socket.gettimeout() == 0.0  # non-blocking from its creation
    client = await d
    while not accepted:
        await sleep(0.01)
    client.transport.write(b"after an immediate connect")
    while bytes(accepted[0].data) != b"after an immediate connect":
        await sleep(0.01)
    client.transport.loseConnection()
    await accepted[0].lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connect_costs_one_connect_and_one_error_check(monkeypatch):
    """An attempt that completes calls ``connect`` once (it started the attempt) and
    reads ``SO_ERROR`` once (when the socket became writable, connect(2)'s way of
    asking how it ended): Twisted called each twice."""
    import socket as socket_module

    calls: list[str] = []
    connect_ex, getsockopt = socket_module.socket.connect_ex, socket_module.socket.getsockopt

    def counted_connect_ex(self, address):
        calls.append("connect")
        return connect_ex(self, address)

    def counted_getsockopt(self, level, option, *rest):
        if option == socket_module.SO_ERROR:
            calls.append("SO_ERROR")
        return getsockopt(self, level, option, *rest)

    port = await fasttcp.listen(reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Collect))
    monkeypatch.setattr(socket_module.socket, "connect_ex", counted_connect_ex)
    monkeypatch.setattr(socket_module.socket, "getsockopt", counted_getsockopt)
    endpoint = fasttcp.TCPClientEndpoint(reactor, "127.0.0.1", port.getHost().port, 5)
    client = await endpoint.connect(Factory.forProtocol(Collect))
    monkeypatch.undo()
    assert calls == ["connect", "SO_ERROR"]
    assert client.transport.connected
    client.transport.loseConnection()
    await client.lost
    await port.stopListening()
