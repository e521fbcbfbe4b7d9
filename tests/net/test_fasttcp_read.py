"""gwcore.net.fasttcp: the read side of the gateway's transports.

``doRead`` keeps Twisted's contract (``tcp.Connection.doRead``): ``None`` when nothing
is there yet or after handing bytes to the protocol, ``CONNECTION_DONE`` at end of file,
``CONNECTION_LOST`` on a socket error. Checked on real loopback connections, for an
accepted connection (:class:`fasttcp.Server`, the peer a plain socket client) and an
outgoing one (:class:`fasttcp.Client`, the peer a plain listening socket), with the
reactor's reading stopped so that each ``doRead`` is the test's own.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error, main, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from gwcore.net import fasttcp
from tests.harness import sleep


class Collect(Protocol):
    """Records the bytes, and the function that handed each piece over."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.callers: list[tuple[str, str]] = []
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        caller = sys._getframe(1).f_code
        self.callers.append((caller.co_filename, caller.co_name))
        self.data += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def accepted() -> tuple[Collect, socket.socket, Any]:
    """A :class:`fasttcp.Server` connection (protocol, plain peer socket, port)."""
    protocols: list[Collect] = []

    def build(addr: object) -> Collect:
        protocols.append(Collect())
        return protocols[-1]

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = await fasttcp.listen(reactor, "tcp:0:interface=127.0.0.1", factory)
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    while not protocols:
        await sleep(0.01)
    await protocols[0].made
    return protocols[0], peer, port


async def outgoing() -> tuple[Collect, socket.socket, socket.socket]:
    """A :class:`fasttcp.Client` connection (protocol, plain peer socket, listener)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    proto = await fasttcp.TCPClientEndpoint(
        reactor, "127.0.0.1", listener.getsockname()[1], 5
    ).connect(Factory.forProtocol(Collect))
    peer, _ = listener.accept()
    return proto, peer, listener


async def connection(kind: str) -> tuple[Collect, socket.socket, Any]:
    return await (accepted() if kind == "server" else outgoing())


async def close(proto: Collect, peer: socket.socket, holder: Any) -> None:
    proto.transport.abortConnection()
    await proto.lost
    peer.close()  # closing a closed socket is a no-op
    if isinstance(holder, socket.socket):
        holder.close()
    else:
        await holder.stopListening()


@pytest.mark.parametrize("kind", ["server", "client"])
@pytest_twisted.ensureDeferred
async def test_bytes_reach_the_protocol_straight_from_do_read(kind: str) -> None:
    """The reactor's read event hands the bytes to ``dataReceived`` from fasttcp's own
    ``doRead`` (one frame; Twisted's goes through ``_dataReceived``), all of them, in
    order."""
    proto, peer, holder = await connection(kind)
    expected = b"".join(b"%05d" % i for i in range(2000))
    peer.sendall(expected)
    while len(proto.data) < len(expected):
        await sleep(0.01)
    assert bytes(proto.data) == expected
    assert set(proto.callers) == {(fasttcp.__file__, "doRead")}
    await close(proto, peer, holder)


@pytest.mark.parametrize("kind", ["server", "client"])
@pytest_twisted.ensureDeferred
async def test_do_read_returns_twisteds_values_for_data_nothing_and_end_of_file(
    kind: str,
) -> None:
    """Nothing to read: ``None`` and nothing delivered; bytes: delivered, ``None``; the
    peer's FIN: ``CONNECTION_DONE``."""
    proto, peer, holder = await connection(kind)
    transport = proto.transport
    transport.stopReading()
    assert transport.doRead() is None
    assert proto.data == b""
    peer.sendall(b"some bytes")
    assert transport.doRead() is None
    assert bytes(proto.data) == b"some bytes"
    peer.shutdown(socket.SHUT_WR)
    assert transport.doRead() is main.CONNECTION_DONE
    await close(proto, peer, holder)


@pytest.mark.parametrize("kind", ["server", "client"])
@pytest_twisted.ensureDeferred
async def test_do_read_returns_connection_lost_when_the_peer_resets(kind: str) -> None:
    """A reset (the peer closes with ``SO_LINGER`` 0): the ``recv`` error is
    ``CONNECTION_LOST``, not raised, and nothing is delivered."""
    proto, peer, holder = await connection(kind)
    transport = proto.transport
    transport.stopReading()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    assert transport.doRead() is main.CONNECTION_LOST
    assert proto.data == b""
    await close(proto, peer, holder)


@pytest_twisted.ensureDeferred
async def test_end_of_file_through_the_reactor_loses_the_connection_cleanly() -> None:
    """The reactor acts on ``doRead``'s answer: the peer's close ends the connection
    with ``ConnectionDone`` after every byte sent before it was delivered."""
    proto, peer, holder = await accepted()
    reasons: list[Any] = []
    proto.connectionLost = lambda reason=None: (  # type: ignore[method-assign]
        reasons.append(reason),
        proto.lost.callback(None),
    )
    peer.sendall(b"last words")
    peer.close()
    await proto.lost
    assert bytes(proto.data) == b"last words"
    assert reasons[0].check(error.ConnectionDone)
    await holder.stopListening()
