"""The switched connection's tunnel (gwcore.net.l7_upgrade), in memory.

The client side is a stand-in for the session (``ClientLink`` plus ``end_writes``), the
service side a stand-in ``UpstreamProtocol`` with a transport that keeps its producer;
what is proved is the splice's rules applied to a tunnel: order, counts, flow control
both ways, half-close passed on, and one report at the end.
"""

from __future__ import annotations

from typing import Any

from gwcore.net.l7_upgrade import Tunnel, UpstreamEnd


class Transport:
    def __init__(self) -> None:
        self.producer: Any = None
        self.paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None, "a producer is already registered"
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


class Service:
    """What the pool connection holds: the UpstreamProtocol of the service's socket."""

    def __init__(self) -> None:
        self.transport = Transport()
        self.transport.producer = object()  # the pool connection's, before the switch
        self.got = bytearray()
        self.eof_sent = False
        self.lost = False
        self.downstream: Any = None

    def send(self, data: bytes) -> None:
        self.got += data

    def send_eof(self) -> None:
        assert self.transport.producer is None, "released before the half-close"
        self.eof_sent = True


class Connection:
    def __init__(self) -> None:
        self.upstream = Service()
        self.closed: str | None = None

    def close(self, reason: str) -> None:
        self.closed = reason


class Client:
    """The session: the tunnel becomes its codec; close() ends with connection_lost."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.reading = False
        self.ended_writes = False
        self.closed: str | None = None
        self.codec: Any = None
        self.downstream: Any = None

    def write(self, data: bytes) -> None:
        self.got += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def end_writes(self) -> None:
        self.ended_writes = True

    def close(self, cause: str) -> None:
        self.closed = cause
        self.codec.connection_lost()


def tunnel(
    early_up: bytes = b"", early_down: bytes = b""
) -> tuple[Tunnel, Client, Connection, list]:
    connection = Connection()
    end = UpstreamEnd(connection, early_down)
    connection.upstream.downstream = end
    client = Client()
    ends: list[tuple[int, int, str | None]] = []
    t = Tunnel(client, end, lambda up, down, error: ends.append((up, down, error)))
    client.codec = t
    t.start(early_up, False)
    return t, client, connection, ends


def test_bytes_flow_in_order_with_what_came_before_the_switch_first():
    """Bytes either side sent past the heads go first; then each read is passed on and
    counted; the client is read again (the codec had paused it)."""
    t, client, connection, _ = tunnel(b"early-up", b"early-down")
    assert client.reading
    t.data_received(b"+1")
    connection.upstream.downstream.send_to_client(b"+2")
    assert bytes(connection.upstream.got) == b"early-up+1"
    assert bytes(client.got) == b"early-down+2"
    assert (t.bytes_up, t.bytes_down) == (10, 12)


def test_flow_control_both_ways():
    """A full client buffer pauses the service's socket; a full service buffer (its
    transport pausing the registered producer) pauses reading the client."""
    t, client, connection, _ = tunnel()
    transport = connection.upstream.transport
    assert transport.producer is connection.upstream.downstream  # the pool's was replaced
    t.set_client_writable(False)
    assert transport.paused
    t.set_client_writable(True)
    assert not transport.paused
    transport.producer.pauseProducing()
    assert not client.reading
    transport.producer.resumeProducing()
    assert client.reading


def test_half_closes_are_passed_on_and_the_end_is_reported_once_clean():
    """The client's end of stream half-closes the service's side (producer released
    first); the service's end half-closes the client's; when the connection then goes,
    the service connection closes and one report says what moved, no error."""
    t, client, connection, ends = tunnel()
    t.data_received(b"abc")
    t.eof_received()
    assert connection.upstream.eof_sent and connection.closed is None
    t.data_received(b"late")  # nothing after the client's own end
    connection.upstream.downstream.send_to_client(b"xy")
    connection.upstream.downstream.upstream_eof()
    assert client.ended_writes and client.closed is None
    t.connection_lost()
    t.connection_lost()
    assert connection.closed is not None
    assert ends == [(3, 2, None)]


def test_service_lost_before_its_end_closes_the_client_and_says_reset():
    """The service's connection is lost mid-stream: the client connection is closed
    (cause ``upstream_closed``) and the report's error is ``reset``."""
    _, client, connection, ends = tunnel()
    connection.upstream.lost = True
    connection.upstream.downstream.upstream_lost()
    assert client.closed == "upstream_closed"
    assert ends == [(0, 0, "reset")]
