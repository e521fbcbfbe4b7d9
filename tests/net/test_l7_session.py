"""The L7 session's writes toward the client: held while a read is handled, and never
overtaken by the half-close that ends them; and the deadline of a connection whose
protocol is not decided yet (bytes that may still be the HTTP/2 preface).

In memory: the clock is ``twisted.internet.task.Clock``; an HTTP/1.1 decision runs the
real codec (h11) with the recording doubles of :mod:`tests.net.test_http1_server`."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from gwcore.net.l7_core import L7Limits
from gwcore.net.l7_session import L7Session
from gwcore.net.write_batch import BATCH
from tests.net.test_http1_server import Starter

HEAD_TIMEOUT = 10.0


class Downstream:
    """What the session writes to: the client's side of the splice, recording in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.close_cause = None

    def send_to_client(self, data: bytes) -> None:
        self.events.append(data)

    def upstream_eof(self) -> None:
        self.events.append("half-close")


def test_a_half_close_goes_after_the_bytes_a_batch_still_holds() -> None:
    """A tunnel that relays the service's last bytes and its end in one read (the
    WebSocket ``hangup`` case) writes the bytes while the read's batch holds them, then
    half-closes: the client gets the bytes first, then close_notify and FIN. (The half
    close once went out first and the held bytes were written after it, lost.)"""
    session = L7Session(starter=None, limits=L7Limits(), on_bad_request=lambda r, d: None)  # type: ignore[arg-type]
    down = Downstream()
    session.downstream = down
    with BATCH:
        session.write(b"bye")
        session.end_writes()
    assert down.events == [b"bye", "half-close"]


class LingeringDownstream(Downstream):
    """The client side as a lingering close uses it: resumable, half-closable, lost."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = False
        self.transport = self

    def resumeProducing(self) -> None:
        return None

    def pauseProducing(self) -> None:
        return None

    def upstream_lost(self) -> None:
        self.lost = True


def undecided_session(clock: Clock, starter: Any = None) -> tuple[L7Session, Any, list[str]]:
    bad: list[str] = []
    limits = L7Limits(request_head_timeout=HEAD_TIMEOUT, clock=clock)
    session = L7Session(starter, limits, on_bad_request=lambda reason, detail: bad.append(reason))
    down = LingeringDownstream()
    session.downstream = down
    return session, down, bad


def test_bytes_that_may_still_be_the_h2_preface_get_the_head_deadline() -> None:
    """No ALPN, and the client trickles the start of the HTTP/2 preface: no codec exists
    yet, yet ``request_head_timeout`` from the first byte ends the connection (counted
    as ``request_head_timeout``, close cause ``bad_request``: close_notify and FIN).
    More preface bytes do not move that deadline."""
    clock = Clock()
    session, down, bad = undecided_session(clock)
    session.send(b"PRI * HT")
    clock.advance(HEAD_TIMEOUT - 0.5)
    session.send(b"TP/2.0\r\n\r\nSM\r\n")
    assert session.codec is None and bad == [] and down.events == []
    clock.advance(0.5)
    assert bad == ["request_head_timeout"]
    assert down.close_cause == "bad_request" and down.events == ["half-close"]
    assert session.lost
    session.send(b"\r\n")  # the rest of the preface, too late: dropped
    assert session.codec is None


def test_a_decision_in_time_ends_the_undecided_deadline() -> None:
    """``P`` could start the preface; ``UT ...`` makes it an HTTP/1.1 ``PUT``: from then on
    the HTTP/1.1 codec's own head timer governs, the session's deadline is gone (nothing
    of it fires after the head is complete)."""
    clock = Clock()
    starter = Starter()
    session, down, bad = undecided_session(clock, starter)
    session.send(b"P")
    clock.advance(HEAD_TIMEOUT - 0.5)
    session.send(b"UT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert session.protocol == "HTTP/1.1" and [e.request.path for e in starter.exchanges] == ["/x"]
    clock.advance(HEAD_TIMEOUT * 3)
    assert bad == [] and down.close_cause is None and not session.lost


def test_a_session_closed_while_undecided_leaves_nothing_scheduled() -> None:
    """The client leaves (or the site stops) while the preface is incomplete: the
    deadline is cancelled with it."""
    clock = Clock()
    session, _, bad = undecided_session(clock)
    session.send(b"PRI")
    assert len(clock.getDelayedCalls()) == 1
    session.shutdown()
    assert clock.getDelayedCalls() == [] and bad == []
