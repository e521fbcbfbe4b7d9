"""The HTTP/1.1 request-head deadline counts from a head's first byte, not from the
end of the previous response: a kept-alive connection between requests is idle (the
site's ``idle_timeout``), not late (Envoy: ``request_headers_timeout`` vs
``idle_timeout``).

The codec runs in memory with real request bytes and h11 as the client; the clock is
``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from gwcore.net.http1_server import Http1Server
from gwcore.net.l7_core import L7Limits
from tests.net.test_http1_server import Link, Starter, responses

TIMEOUT = 10.0
GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


def timed(starter: Starter) -> tuple[Http1Server, Link, Clock]:
    clock = Clock()
    link = Link()
    limits = L7Limits(request_head_timeout=TIMEOUT, clock=clock)
    return Http1Server(link, starter, limits), link, clock


def test_a_kept_alive_connection_idle_longer_than_the_head_timeout_stays_open() -> None:
    """After a response, a client that waits ten head timeouts before its next request
    keeps its connection (only ``idle_timeout`` ends an idle one) and the next request
    is served on it."""
    starter = Starter()
    server, link, clock = timed(starter)
    server.data_received(GET % 1)
    starter.exchanges[0].answer(200, b"one")
    clock.advance(TIMEOUT * 10)
    assert link.closed is None and link.bad == []
    assert clock.getDelayedCalls() == []  # nothing is scheduled for an idle connection
    server.data_received(GET % 2)
    starter.exchanges[1].answer(200, b"two")
    assert link.closed is None
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two")]


def test_the_next_heads_deadline_counts_from_its_first_byte() -> None:
    """A kept-alive connection idle for a long time, then part of a head: the client has
    ``request_head_timeout`` from that first byte, not from the previous response's end
    (which would have passed long ago); then it gets 408."""
    starter = Starter()
    server, link, clock = timed(starter)
    server.data_received(GET % 1)
    starter.exchanges[0].answer(200, b"one")
    clock.advance(100)
    server.data_received(b"GET /2 HTTP/1.1\r\n")
    clock.advance(TIMEOUT - 0.5)
    server.data_received(b"Host: x\r\n")  # still trickling: the deadline does not move
    assert link.closed is None
    clock.advance(0.6)
    assert link.bad == ["request_head_timeout"] and link.closed == "bad_request"
    assert responses(bytes(link.out)) == [(200, b"one"), (408, b"Request Timeout\n")]
    assert len(starter.exchanges) == 1


def test_a_head_completed_in_time_after_a_long_idle_is_served() -> None:
    """Idle past the head timeout, then a head in two pieces within it: served, and the
    deadline is gone once the head is complete (a slow service is not the client's)."""
    starter = Starter()
    server, link, clock = timed(starter)
    server.data_received(GET % 1)
    starter.exchanges[0].answer(200, b"one")
    clock.advance(TIMEOUT * 3)
    server.data_received(b"GET /2 HTTP/1.1\r\n")
    clock.advance(TIMEOUT - 1)
    server.data_received(b"Host: x\r\n\r\n")
    clock.advance(TIMEOUT * 3)  # the service takes its time
    starter.exchanges[1].answer(200, b"two")
    assert link.closed is None and link.bad == []
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two")]


def test_a_pipelined_partial_head_is_timed_from_the_previous_responses_end() -> None:
    """A complete request and the start of a second one in one read: the second head's
    bytes are already here when the first response ends, so its deadline starts then
    (no later byte is needed to start it) and passes with a 408."""
    starter = Starter()
    server, link, clock = timed(starter)
    server.data_received(GET % 1 + b"GET /2 HTTP/1.1\r\nHo")
    clock.advance(TIMEOUT * 2)  # a slow service: the request in flight is not timed
    starter.exchanges[0].answer(200, b"one")
    assert link.closed is None
    clock.advance(TIMEOUT + 0.1)
    assert link.bad == ["request_head_timeout"] and link.closed == "bad_request"
    assert responses(bytes(link.out)) == [(200, b"one"), (408, b"Request Timeout\n")]


def test_a_new_connection_is_timed_from_its_first_byte() -> None:
    """A codec made before any byte came (no head awaited yet) schedules nothing; the
    first byte starts the deadline."""
    starter = Starter()
    server, link, clock = timed(starter)
    clock.advance(TIMEOUT * 5)
    assert link.closed is None and clock.getDelayedCalls() == []
    server.data_received(b"GET / HTTP/1.1\r\n")
    clock.advance(TIMEOUT - 0.1)
    assert link.closed is None
    clock.advance(0.2)
    assert link.bad == ["request_head_timeout"] and link.closed == "bad_request"


def test_a_zero_head_timeout_schedules_nothing() -> None:
    """``request_head_timeout = 0`` is off: a trickled head is never timed out here."""
    starter = Starter()
    clock = Clock()
    link = Link()
    server = Http1Server(link, starter, L7Limits(request_head_timeout=0, clock=clock))
    server.data_received(b"GET / HTTP/1.1\r\n")
    assert clock.getDelayedCalls() == []
    clock.advance(1000)
    assert link.closed is None
