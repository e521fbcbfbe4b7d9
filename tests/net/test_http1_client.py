"""The HTTP/1.1 upstream pool in memory: real h11 bytes on StringTransports, a task.Clock.

The dial step is a double that hands out ``UpstreamProtocol`` instances on
``StringTransport``s (what the plain strategy would connect), so every rule of the
pool is checked on the bytes the service would see.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gwcore.contract.http_flow import Headers, HttpRequest
from gwcore.net.http_pool import Http1Pool, PoolLimits
from gwcore.net.splice import UpstreamProtocol
from gwcore.policy.model import Endpoint


class Sink:
    def __init__(self) -> None:
        self.status: int | None = None
        self.body = b""
        self.ended = False
        self.failure: Any = None

    def response_head(self, response: Any) -> None:
        self.status = response.status

    def response_data(self, data: bytes) -> None:
        self.body += data

    def response_end(self, trailers: Any = None) -> None:
        self.ended = True

    def response_failed(self, failure: Any) -> None:
        self.failure = failure


class Dialer:
    def __init__(self) -> None:
        self.made: list[tuple[UpstreamProtocol, StringTransport]] = []
        self.released: list[Endpoint] = []

    def dial(self, owner: Any, factory: Any) -> Any:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.made.append((protocol, transport))
        return succeed((protocol, Endpoint("127.0.0.1", 8080), 1, 0.0))


def pool(limits: PoolLimits | None = None) -> tuple[Http1Pool, Dialer, Clock]:
    clock, dialer = Clock(), Dialer()
    return (
        Http1Pool(clock, dialer.dial, limits or PoolLimits(), dialer.released.append),
        dialer,
        clock,
    )


def get(path: str, **headers: str) -> HttpRequest:
    return HttpRequest("GET", path, "svc", headers=Headers([("host", "svc"), *headers.items()]))


def answer(protocol: UpstreamProtocol, head: bytes, body: bytes = b"") -> None:
    protocol.dataReceived(head + body)


def test_a_connection_is_reused_after_a_complete_keep_alive_response() -> None:
    p, dialer, _ = pool()
    first = Sink()
    stream = p.open(get("/1"), first, None)
    stream.send_end()
    protocol, transport = dialer.made[0]
    assert transport.value().startswith(b"GET /1 HTTP/1.1\r\n")
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok")
    assert (first.status, first.body, first.ended) == (200, b"ok", True)
    transport.clear()
    second = Sink()
    p.open(get("/2"), second, None).send_end()
    assert len(dialer.made) == 1 and transport.value().startswith(b"GET /2 HTTP/1.1\r\n")


def test_connection_close_from_the_service_is_not_reused() -> None:
    p, dialer, _ = pool()
    p.open(get("/1"), Sink(), None).send_end()
    protocol, transport = dialer.made[0]
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert transport.disconnecting
    p.open(get("/2"), Sink(), None).send_end()
    assert len(dialer.made) == 2
    assert dialer.released == [Endpoint("127.0.0.1", 8080)]


def test_a_response_before_the_request_ended_closes_the_connection() -> None:
    """The service answered while the upload was still going: that connection cannot
    carry another request (the rest of the body would be read as one)."""
    p, dialer, _ = pool()
    request = HttpRequest(
        "PUT", "/u", "svc", headers=Headers([("host", "svc"), ("content-length", "10")])
    )
    sink = Sink()
    stream = p.open(request, sink, None)
    stream.send_data(b"12345")
    protocol, transport = dialer.made[0]
    answer(protocol, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert sink.status == 413 and sink.ended
    assert transport.disconnecting
    p.open(get("/next"), Sink(), None).send_end()
    assert len(dialer.made) == 2


def test_full_pool_with_no_queue_fails_with_503_overflow() -> None:
    p, dialer, clock = pool(PoolLimits(max_connections=1, max_pending=0))
    p.open(get("/1"), Sink(), None).send_end()
    second = Sink()
    p.open(get("/2"), second, None)
    assert second.failure is None  # never from inside open()
    clock.advance(0)
    assert second.failure.status == 503 and second.failure.reason == "overflow"
    assert len(dialer.made) == 1


def test_a_waiting_request_gets_the_connection_when_it_is_free() -> None:
    p, dialer, _ = pool(PoolLimits(max_connections=1, max_pending=4))
    p.open(get("/1"), Sink(), None).send_end()
    waiting = Sink()
    p.open(get("/2"), waiting, None).send_end()
    protocol, transport = dialer.made[0]
    transport.clear()
    answer(protocol, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert transport.value().startswith(b"GET /2 HTTP/1.1\r\n")
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", b"x")
    assert waiting.body == b"x" and len(dialer.made) == 1


def test_idle_connections_close_after_the_idle_timeout_and_beyond_max_idle() -> None:
    p, dialer, clock = pool(PoolLimits(max_idle=1, idle_timeout=30.0))
    streams = [p.open(get(f"/{i}"), Sink(), None) for i in range(2)]
    for stream in streams:
        stream.send_end()
    assert len(dialer.made) == 2
    for protocol, _ in dialer.made:
        answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (_, first), (_, second) = dialer.made
    assert not first.disconnecting and second.disconnecting  # max_idle = 1
    clock.advance(30.0)
    assert first.disconnecting


def test_an_unreachable_service_fails_the_request_with_502() -> None:
    from twisted.internet.defer import fail

    from gwcore.net.upstream import UpstreamConnectError

    clock = Clock()
    p = Http1Pool(
        clock,
        lambda owner, factory: fail(UpstreamConnectError("unavailable", "refused")),
        PoolLimits(),
    )
    sink = Sink()
    p.open(get("/"), sink, None)
    assert sink.failure.status == 502 and sink.failure.reason == "unavailable"


def test_trailers_on_a_request_framed_by_content_length_are_dropped_not_fatal() -> None:
    """Trailers (from an HTTP/2 client, say) on a body with Content-Length cannot be
    sent in HTTP/1.1: they are dropped and the request completes."""
    p, dialer, _ = pool()
    request = HttpRequest(
        "POST", "/t", "svc", headers=Headers([("host", "svc"), ("content-length", "2")])
    )
    sink = Sink()
    stream = p.open(request, sink, None)
    stream.send_data(b"hi")
    stream.send_end(Headers([("grpc-status", "0")]))
    protocol, transport = dialer.made[0]
    assert transport.value().endswith(b"\r\n\r\nhi")
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert sink.ended and sink.failure is None and not transport.disconnecting


def test_a_pause_left_by_a_finished_response_does_not_stall_the_next_one() -> None:
    """The client stopped reading (the stream was paused) in the same read that
    completed the response: the connection goes idle reading again, so the next
    request's response on it is read (before, the service's socket stayed paused and
    the next response stalled until a timeout)."""
    p, dialer, _ = pool()

    class PausingSink(Sink):
        stream: Any = None

        def response_head(self, response: Any) -> None:
            super().response_head(response)
            self.stream.pauseProducing()  # the client's buffer is full

    first = PausingSink()
    first.stream = p.open(get("/1"), first, None)
    first.stream.send_end()
    protocol, transport = dialer.made[0]
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok")
    assert first.ended
    assert transport.producerState == "producing"  # idle, and reading for EOF
    second = Sink()
    p.open(get("/2"), second, None).send_end()
    assert len(dialer.made) == 1 and transport.producerState == "producing"
    answer(protocol, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", b"x")
    assert second.body == b"x" and second.ended
