"""Bytes a service sends after a complete response, not yet read when its pooled
connection is handed straight to a waiting request, must never be that request's
answer: the connection is closed and the waiting request goes on a fresh one.

The pool runs in memory (h11 bytes on transports, ``task.Clock``) as in
``test_http1_client``, except that the service's transport holds a real kernel socket
(one end of a ``socketpair``): what the service wrote there and the reactor has not
read yet is exactly what sits in that socket's receive buffer, and ``dataReceived``
stands for the reads the reactor did make.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport

from gwcore.net.http_pool import Http1Pool, PoolLimits
from gwcore.net.splice import UpstreamProtocol
from gwcore.policy.model import Endpoint
from tests.net.test_http1_client import Sink, get

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Poison: 1\r\n\r\nPOISON"


class SocketTransport(StringTransport):
    """What the reactor's TCP transport offers the pool, over a real socket: writes are
    recorded (``value()``); ``getHandle()`` is the gateway's end of the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.ours, self.theirs = socket.socketpair()

    def getHandle(self) -> socket.socket:
        return self.ours

    def close_sockets(self) -> None:
        self.ours.close()
        self.theirs.close()


class SocketDialer:
    def __init__(self) -> None:
        self.made: list[tuple[UpstreamProtocol, SocketTransport]] = []

    def dial(self, owner: Any, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = SocketTransport()
        protocol.makeConnection(transport)
        self.made.append((protocol, transport))
        return succeed((protocol, Endpoint("127.0.0.1", 8080), 1, 0.0))

    def close(self) -> None:
        for _, transport in self.made:
            transport.close_sockets()


def one_connection_and_a_waiting_request() -> tuple[SocketDialer, Sink, Sink]:
    from twisted.internet.task import Clock

    dialer = SocketDialer()
    p = Http1Pool(Clock(), dialer.dial, PoolLimits(max_connections=1, max_pending=4))
    first, waiting = Sink(), Sink()
    p.open(get("/1"), first, None).send_end()
    p.open(get("/2"), waiting, None).send_end()
    assert len(dialer.made) == 1  # /2 waits for the only connection
    return dialer, first, waiting


def test_unread_bytes_after_a_response_close_the_connection_before_a_handoff() -> None:
    """The service answered /1 and, in a later segment, sent a whole second response
    the reactor has not read yet. /1 gets its answer; the connection is not handed to
    /2 (it is closed, /2's head never written on it); /2 goes out on a new connection
    and gets that connection's answer, never the stray bytes."""
    dialer, first, waiting = one_connection_and_a_waiting_request()
    try:
        protocol, transport = dialer.made[0]
        transport.clear()
        transport.theirs.sendall(POISON)  # arrived, not read yet
        protocol.dataReceived(OK)  # the read the reactor made
        assert (first.status, first.body, first.ended) == (200, b"ok", True)
        assert transport.value() == b"" and transport.disconnecting
        assert len(dialer.made) == 2
        fresh, fresh_transport = dialer.made[1]
        assert fresh_transport.value().startswith(b"GET /2 HTTP/1.1\r\n")
        fresh.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
        assert (waiting.status, waiting.body, waiting.ended) == (200, b"fresh", True)
        assert waiting.failure is None
    finally:
        dialer.close()


def test_a_service_that_closed_after_its_response_is_not_handed_on() -> None:
    """The service's FIN after a keep-alive response, not read yet, is as good as a
    stray byte: the waiting request goes on a new connection, not onto one that is
    about to fail."""
    dialer, first, waiting = one_connection_and_a_waiting_request()
    try:
        protocol, transport = dialer.made[0]
        transport.theirs.shutdown(socket.SHUT_WR)
        protocol.dataReceived(OK)
        assert first.ended and transport.disconnecting
        assert len(dialer.made) == 2
        fresh, fresh_transport = dialer.made[1]
        assert fresh_transport.value().startswith(b"GET /2 HTTP/1.1\r\n")
        fresh.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert waiting.status == 204 and waiting.ended and waiting.failure is None
    finally:
        dialer.close()


def test_a_quiet_socket_is_handed_straight_to_the_waiting_request() -> None:
    """Nothing unread after the response: the same connection carries /2 at once (the
    check costs no reuse)."""
    dialer, first, waiting = one_connection_and_a_waiting_request()
    try:
        protocol, transport = dialer.made[0]
        transport.clear()
        protocol.dataReceived(OK)
        assert first.ended and not transport.disconnecting
        assert transport.value().startswith(b"GET /2 HTTP/1.1\r\n")
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        assert waiting.body == b"two" and len(dialer.made) == 1
    finally:
        dialer.close()
