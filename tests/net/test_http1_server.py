"""The HTTP/1.1 downstream codec in memory: real request bytes in, real h11 parsing out.

The link (the client connection) and the exchanges are recording doubles; what they
receive is checked byte for byte with h11 as the client.
"""

from __future__ import annotations

from typing import Any

import h11

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.http1_server import Http1Server
from gwcore.net.l7_core import L7Limits


class Link:
    def __init__(self) -> None:
        self.out = bytearray()
        self.paused = False
        self.closed: str | None = None
        self.bad: list[str] = []

    def write(self, data: bytes) -> None:
        self.out += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self, cause: str) -> None:
        self.closed = cause

    def bad_request(self, reason: str, detail: str) -> None:
        self.bad.append(reason)


class Exchange:
    def __init__(self, request: Any, writer: Any) -> None:
        self.request = request
        self.writer = writer
        self.body = b""
        self.ended = False
        self.gone: str | None = None
        self.request_producer: Any = None

    def request_data(self, data: bytes) -> None:
        self.body += data

    def request_end(self, trailers: Headers | None = None) -> None:
        self.ended = True
        self.trailers = trailers

    def client_gone(self, reason: str) -> None:
        self.gone = reason

    def answer(self, status: int, body: bytes = b"") -> None:
        self.writer.write_head(HttpResponse(status, Headers([("content-length", str(len(body)))])))
        if body:
            self.writer.write_data(body)
        self.writer.write_end(None)


class Starter:
    def __init__(self, answer_at_once: int | None = None) -> None:
        self.exchanges: list[Exchange] = []
        self.answer_at_once = answer_at_once

    def start(self, request: Any, writer: Any) -> Exchange:
        exchange = Exchange(request, writer)
        self.exchanges.append(exchange)
        if self.answer_at_once is not None:
            exchange.answer(self.answer_at_once, b"RBAC: access denied")
        return exchange


def codec(starter: Starter, kb: int = 60) -> tuple[Http1Server, Link]:
    link = Link()
    return Http1Server(link, starter, L7Limits(max_request_headers_kb=kb)), link


def responses(data: bytes) -> list[tuple[int, bytes]]:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    found: list[tuple[int, bytes]] = []
    status, body = 0, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return found
        if isinstance(event, h11.InformationalResponse):
            found.append((event.status_code, b""))
        elif isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            found.append((status, body))
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                return found
            client.start_next_cycle()
            client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            client.send(h11.EndOfMessage())


def test_pipelined_requests_start_one_exchange_at_a_time_in_order() -> None:
    """Two requests in one read: the second exchange starts only after the first's
    response ended, and the client is not read while a response is pending."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [e.request.path for e in starter.exchanges] == ["/1"]
    first = starter.exchanges[0]
    first.request_producer.resumeProducing()  # the exchange asks for the (empty) body
    assert first.ended and link.paused
    first.answer(200, b"one")
    assert [e.request.path for e in starter.exchanges] == ["/1", "/2"]
    second = starter.exchanges[1]
    second.request_producer.resumeProducing()
    second.answer(200, b"two")
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two")]
    assert link.closed is None


def test_the_body_waits_for_the_exchange_and_100_continue_comes_with_it() -> None:
    """A body is not delivered before the exchange asks; ``Expect: 100-continue`` is
    answered exactly when it asks."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    exchange = starter.exchanges[0]
    assert bytes(link.out) == b""
    exchange.request_producer.resumeProducing()
    assert bytes(link.out).startswith(b"HTTP/1.1 100 ")
    server.data_received(b"hello")
    assert exchange.body == b"hello" and exchange.ended


def test_content_length_with_transfer_encoding_is_400_and_starts_nothing() -> None:
    starter = Starter()
    server, link = codec(starter)
    server.data_received(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert starter.exchanges == []
    assert bytes(link.out).startswith(b"HTTP/1.1 400 ")
    assert link.bad == ["content_length_with_transfer_encoding"] and link.closed == "bad_request"


def test_a_head_over_the_limit_is_431_whether_it_came_whole_or_in_pieces() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 1500 + b"\r\n\r\n"
    for pieces in ([head], [head[:700], head[700:]]):
        starter = Starter()
        server, link = codec(starter, kb=1)
        for piece in pieces:
            server.data_received(piece)
        assert starter.exchanges == []
        assert bytes(link.out).startswith(b"HTTP/1.1 431 "), pieces
        assert link.bad == ["headers_too_large"]


def test_an_answer_before_the_body_drops_the_body_and_keeps_the_connection() -> None:
    """A request answered at once (a denial) with its body still to come: the body is
    read and dropped, and the next request on the connection is served."""
    starter = Starter(answer_at_once=403)
    server, link = codec(starter)
    server.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    server.data_received(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [e.request.path for e in starter.exchanges] == ["/a", "/b"]
    assert starter.exchanges[0].body == b""
    assert responses(bytes(link.out)) == [
        (403, b"RBAC: access denied"),
        (403, b"RBAC: access denied"),
    ]
    assert link.closed is None


def test_trailers_on_a_content_length_response_are_dropped_and_the_connection_lives() -> None:
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange = starter.exchanges[0]
    exchange.request_producer.resumeProducing()
    exchange.writer.write_head(HttpResponse(200, Headers([("content-length", "2")])))
    exchange.writer.write_data(b"ok")
    exchange.writer.write_end(Headers([("x-trailer", "1")]))
    assert responses(bytes(link.out)) == [(200, b"ok")]
    assert link.closed is None


def test_a_response_h11_refuses_closes_the_connection_without_raising() -> None:
    """An addon's header value with a line break: the connection ends (``bad_response``),
    nothing is raised into the data path."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange = starter.exchanges[0]
    exchange.writer.write_head(HttpResponse(200, Headers([("x-bad", "a\r\nInjected: 1")])))
    assert link.closed == "bad_response" and b"Injected" not in bytes(link.out)


def _timed(starter: Starter, timeout: float = 10.0):
    from twisted.internet.task import Clock

    clock = Clock()
    link = Link()
    limits = L7Limits(request_head_timeout=timeout, clock=clock)
    return Http1Server(link, starter, limits), link, clock


def test_a_head_trickled_past_request_head_timeout_is_408_and_closed() -> None:
    """Slowloris: part of a head, then nothing. At ``request_head_timeout`` the client
    gets 408, the reason ``request_head_timeout`` is counted and the connection closes;
    no exchange starts."""
    starter = Starter()
    server, link, clock = _timed(starter)
    server.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    clock.advance(5)
    server.data_received(b"X-A: b\r\n")  # bytes keep coming, but no complete head
    clock.advance(5)
    assert starter.exchanges == []
    assert bytes(link.out).startswith(b"HTTP/1.1 408 ")
    assert link.bad == ["request_head_timeout"] and link.closed == "bad_request"


def test_the_head_timeout_restarts_after_each_response_and_spares_requests_in_flight() -> None:
    """The deadline stops with a complete head (a slow service is not the client's
    fault) and starts again at the next head's first byte: a kept-alive connection that
    sends nothing is left to the site's ``idle_timeout`` (tests/net/test_http1_head_timer.py)."""
    starter = Starter()
    server, link, clock = _timed(starter)
    clock.advance(9)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    exchange = starter.exchanges[0]
    exchange.request_producer.resumeProducing()
    clock.advance(30)  # the service is slow: no timeout while the request is in flight
    assert link.closed is None
    exchange.answer(200, b"one")
    clock.advance(30)
    assert link.closed is None
    server.data_received(b"GET /2 HTTP/1.1\r\n")
    clock.advance(9.9)
    assert link.closed is None
    clock.advance(0.2)
    assert link.closed == "bad_request" and link.bad == ["request_head_timeout"]
    assert responses(bytes(link.out)) == [(200, b"one"), (408, b"Request Timeout\n")]
