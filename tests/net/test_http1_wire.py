"""The HTTP/1.1 downstream codec's reads of the client: paused only when bytes wait.

Real request bytes into :class:`~gwcore.net.http1_server.Http1Server`, h11 as the
client reading what it wrote; the link counts every pause and resume it is asked for
(each one an ``epoll_ctl`` on the real client transport).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from gwcore.net.http1_server import Http1Server
from gwcore.net.l7_core import L7Limits
from tests.net.test_http1_server import Link, Starter, codec, responses


class CountingLink(Link):
    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        self.pauses += 1
        super().pause_reading()

    def resume_reading(self) -> None:
        self.resumes += 1
        super().resume_reading()


def counting(starter: Starter):
    server, _ = codec(starter)
    link = server.link = CountingLink()
    return server, link


def test_keep_alive_requests_answered_later_never_pause_the_client() -> None:
    """Requests sent one after another, each answered after its read was handled (as a
    service's response comes): the client is neither paused nor resumed for any."""
    starter = Starter()
    server, link = counting(starter)
    for i in range(3):
        server.data_received(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        exchange = starter.exchanges[i]
        exchange.request_producer.resumeProducing()  # authorized: the (empty) body
        assert exchange.ended
        exchange.answer(200, b"ok")
    assert (link.pauses, link.resumes) == (0, 0)
    assert responses(bytes(link.out)) == [(200, b"ok")] * 3
    assert link.closed is None


def test_a_next_request_during_a_response_pauses_the_client_until_it_ended() -> None:
    """Bytes of a next request that arrive while a response is on its way are held (one
    read) and the client paused; after the response the next request starts and the
    client is read again."""
    starter = Starter()
    server, link = counting(starter)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    first = starter.exchanges[0]
    first.request_producer.resumeProducing()
    assert not link.paused
    server.data_received(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert link.paused and len(starter.exchanges) == 1
    first.answer(200, b"one")
    assert [e.request.path for e in starter.exchanges] == ["/1", "/2"]
    assert not link.paused
    second = starter.exchanges[1]
    second.request_producer.resumeProducing()
    second.answer(200, b"two")
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two")]


def test_a_body_before_the_exchange_asks_pauses_the_client_after_one_read() -> None:
    """A body that arrives before its exchange asked for it (authorization pending) is
    held, not delivered, and the client is paused at that read; the body flows once
    the exchange asks."""
    starter = Starter()
    server, link = counting(starter)
    server.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    exchange = starter.exchanges[0]
    assert not link.paused  # nothing waits yet
    server.data_received(b"01234")
    assert link.paused and exchange.body == b""
    exchange.request_producer.resumeProducing()
    assert exchange.body == b"01234" and not link.paused
    server.data_received(b"56789")
    assert exchange.body == b"0123456789" and exchange.ended


class CountingClock(Clock):
    """A ``task.Clock`` that counts the timers scheduled on it."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def callLater(self, delay: float, fn: Any, *args: Any, **kw: Any) -> Any:
        self.scheduled += 1
        return super().callLater(delay, fn, *args, **kw)


def timed(starter: Starter, timeout: float = 10.0) -> tuple[Http1Server, Link, CountingClock]:
    clock = CountingClock()
    link = Link()
    limits = L7Limits(request_head_timeout=timeout, clock=clock)
    return Http1Server(link, starter, limits), link, clock


def test_kept_alive_requests_schedule_the_head_timer_once_not_per_request() -> None:
    """Five requests answered at once on a kept-alive connection (with
    ``request_head_timeout``) schedule one timer in all; the connection is not closed
    while they run."""
    starter = Starter()
    server, link, clock = timed(starter)
    for i in range(5):
        server.data_received(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        exchange = starter.exchanges[i]
        exchange.request_producer.resumeProducing()
        exchange.answer(200, b"ok")
    assert clock.scheduled == 1
    assert link.closed is None and len(responses(bytes(link.out))) == 5


def test_a_stale_head_timer_does_not_close_a_head_whose_deadline_moved_on() -> None:
    """The one timer scheduled for an earlier head does not expire a later head early:
    a head whose first byte came at t=5 gets its 408 exactly ``request_head_timeout``
    later (t=15), although the timer first came due at t=11, and nothing stays
    scheduled after the close."""
    starter = Starter()
    server, link, clock = timed(starter)
    clock.advance(1)
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")  # timer due at t=11
    exchange = starter.exchanges[0]
    exchange.request_producer.resumeProducing()
    clock.advance(1)
    exchange.answer(200, b"one")
    clock.advance(3)  # t=5: the next head starts and stalls; its deadline is t=15
    server.data_received(b"GET /2 HTTP/1.1\r\n")
    clock.advance(9)  # t=14: the first timer (due at t=11) came and went
    assert link.closed is None
    clock.advance(1)  # t=15
    assert link.closed is not None
    assert b"408" in bytes(link.out).split(b"one", 1)[1]
    assert clock.getDelayedCalls() == []
    assert clock.scheduled == 2
