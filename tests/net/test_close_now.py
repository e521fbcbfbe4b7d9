"""Closes without a reactor turn (issue 28): gwcore.net.fasttcp's lose_connection and
lose_write_connection over real loopback sockets.

Twisted's loseConnection/loseWriteConnection register the socket for writing and
close on the next writable event, even with nothing left to send. With nothing
queued and no producer, ours close at once; with bytes queued (or a producer
registered) they are Twisted's own calls, and every byte still arrives in order.
"""

from __future__ import annotations

import hashlib
import random

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from gwcore.net import fasttcp
from gwcore.net.splice import _PauseOnly
from tests.harness import hello, in_thread, request, sleep, sni_for
from tests.net.test_fasttcp import Collect, pair
from tests.net.test_terminator import setup_catalog


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Collect):
    """Hears each direction's end apart (a FIN is not the end of the connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_end: Deferred[None] = Deferred()
        self.write_ended = False

    def readConnectionLost(self) -> None:
        self.read_end.callback(None)

    def writeConnectionLost(self) -> None:
        self.write_ended = True


def count_write_registrations(monkeypatch) -> list[object]:
    """Every connected transport the reactor is asked to watch for writability."""
    registered: list[object] = []
    original = reactor.addWriter

    def add_writer(selectable):
        if getattr(selectable, "connected", False):
            registered.append(selectable)
        return original(selectable)

    monkeypatch.setattr(reactor, "addWriter", add_writer)
    return registered


@pytest_twisted.ensureDeferred
async def test_a_close_with_nothing_queued_happens_before_the_call_returns(monkeypatch):
    """The socket is never watched for writing, the protocol's connectionLost has run
    when lose_connection returns, and the peer reads the end of the stream."""
    client, server, port = await pair()
    registered = count_write_registrations(monkeypatch)
    client.transport.write(b"last words")
    fasttcp.lose_connection(client.transport)
    assert client.lost.called
    assert registered == []
    await server.lost
    assert bytes(server.data) == b"last words"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_close_with_bytes_queued_flushes_them_first():
    """With the reader paused a 16 MiB write is partly queued in Python: the close waits
    for the reactor (Twisted's path) and every byte arrives, in order, before the end."""
    client, server, port = await pair()
    server.transport.pauseProducing()
    payload = random.Random(7).randbytes(16 * 1024 * 1024)
    client.transport.write(payload)
    assert client.transport._tempDataLen or client.transport.dataBuffer
    fasttcp.lose_connection(client.transport)
    assert not client.lost.called  # not yet: bytes are still queued
    server.transport.resumeProducing()
    await server.lost
    assert hashlib.sha256(server.data).digest() == hashlib.sha256(payload).digest()
    await client.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_close_with_a_producer_registered_is_left_to_twisted():
    """A registered producer keeps Twisted's rule (the close waits until it is
    unregistered), so nothing is closed under a producer's feet."""
    client, server, port = await pair()
    client.transport.registerProducer(_PauseOnly(server.transport), True)
    fasttcp.lose_connection(client.transport)
    assert not client.lost.called
    client.transport.unregisterProducer()
    await client.lost
    await server.lost
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_half_close_with_nothing_queued_sends_fin_at_once_and_reading_goes_on(
    monkeypatch,
):
    """lose_write_connection: the protocol hears writeConnectionLost before the call
    returns, the peer reads the end of the stream, and bytes the peer sends afterwards
    still arrive (only the write side is closed)."""
    servers: list[HalfCloseable] = []
    factory = fasttcp.Factory()
    factory.buildProtocol = lambda addr: servers.append(HalfCloseable()) or servers[-1]  # type: ignore[method-assign]
    port = await fasttcp.listen(reactor, "tcp:0:interface=127.0.0.1", factory)
    client = await fasttcp.TCPClientEndpoint(reactor, "127.0.0.1", port.getHost().port, 5).connect(
        fasttcp.Factory.forProtocol(HalfCloseable)
    )
    while not servers:
        await sleep(0.01)
    server = servers[0]
    registered = count_write_registrations(monkeypatch)
    client.transport.write(b"request")
    fasttcp.lose_write_connection(client.transport)
    assert client.write_ended and registered == []
    await server.read_end
    assert bytes(server.data) == b"request"
    server.transport.write(b"answer after the FIN")
    fasttcp.lose_connection(server.transport)
    await client.read_end  # a half-closeable protocol hears each end apart
    assert bytes(client.data) == b"answer after the FIN"
    fasttcp.lose_connection(client.transport)
    assert client.lost.called
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_spliced_connections_close_without_waiting_for_writability(
    gateway, upstreams, monkeypatch
):
    """A terminated connection to a service that answers and closes first (the
    benchmark's handshake scenario): the client gets the whole answer, and neither
    side's socket is ever registered for writing to close it (Twisted's
    loseConnection/loseWriteConnection used to register both, one wake-up each)."""
    up = upstreams(hello(b"the answer" * 1000))
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    await in_thread(request, gateway.port, sni_for("billing"), files)  # warm
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    registered = count_write_registrations(monkeypatch)
    for _ in range(3):
        got = await in_thread(request, gateway.port, sni_for("billing"), files)
        assert got == b"the answer" * 1000
    await gateway.wait_for(lambda: len(gateway.access_records()) == 4)
    spliced = [t for t in registered if isinstance(t, fasttcp.Server | fasttcp.Client)]
    assert spliced == [], spliced
    assert {r["close_cause"] for r in gateway.access_records()} == {"completed"}
