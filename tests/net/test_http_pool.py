"""The HTTP/1.1 pool's per-endpoint rules (gwcore.net.http_pool) in memory: real h11
bytes on StringTransports, a task.Clock, a dial double that connects to the first
endpoint of the order it is given (what the site's dial step does when it succeeds)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gwcore.contract.http_flow import Headers, HttpRequest
from gwcore.net.http_pool import Choice, Http1Pool, PoolLimits
from gwcore.net.splice import UpstreamProtocol
from gwcore.policy.model import Endpoint, Health
from tests.net.test_http1_client import Sink, answer

A, B = Endpoint("127.0.0.1", 8001), Endpoint("127.0.0.1", 8002)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Dialer:
    def __init__(self) -> None:
        self.made: list[tuple[Endpoint, UpstreamProtocol, StringTransport]] = []

    def dial(self, owner: Any, factory: Any, endpoints: Any = None) -> Any:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.made.append((endpoints[0], protocol, transport))
        return succeed((protocol, endpoints[0], 1, 0.0))

    def to(self, endpoint: Endpoint) -> list[tuple[UpstreamProtocol, StringTransport]]:
        return [(p, t) for e, p, t in self.made if e == endpoint]


def request(path: str, endpoint: Endpoint, hashed: bool = False) -> HttpRequest:
    """A request whose plan (see ``pool``) sends it to ``endpoint``."""
    headers = Headers([("host", "svc"), ("x-to", str(endpoint.port))])
    if hashed:
        headers.add("x-hashed", "1")
    return HttpRequest("GET", path, "svc", headers=headers)


def plan(owner: Any, req: HttpRequest) -> Choice:
    first = A if req.headers.get("x-to") == str(A.port) else B
    other = B if first == A else A
    return Choice((first, other), hashed=req.headers.get("x-hashed") == "1")


def pool(limits: PoolLimits) -> tuple[Http1Pool, Dialer, Clock]:
    clock, dialer = Clock(), Dialer()
    return Http1Pool(clock, dialer.dial, limits, plan=plan), dialer, clock


def test_idle_connections_are_kept_per_endpoint_and_reused_for_their_endpoint() -> None:
    """max_idle = 1 keeps one idle connection to *each* endpoint; a request chosen for
    B reuses B's connection, not A's."""
    p, dialer, clock = pool(PoolLimits(max_idle=1, idle_timeout=30.0))
    for path, endpoint in (("/a", A), ("/b", B)):
        p.open(request(path, endpoint), Sink(), None).send_end()
    for _, protocol, _ in dialer.made:
        answer(protocol, OK)
    assert [t.disconnecting for _, _, t in dialer.made] == [False, False]
    assert (p.idle_count(A), p.idle_count(B)) == (1, 1)
    ((_, b_transport),) = dialer.to(B)
    b_transport.clear()
    p.open(request("/b2", B), Sink(), None).send_end()
    assert len(dialer.made) == 2 and b_transport.value().startswith(b"GET /b2 ")
    clock.advance(30.0)
    ((_, a_transport),) = dialer.to(A)
    assert a_transport.disconnecting  # A's idle connection timed out


def test_a_request_for_an_endpoint_without_idle_connections_dials_it() -> None:
    """An idle connection to A does not serve a request chosen for B: B is dialled."""
    p, dialer, _ = pool(PoolLimits())
    p.open(request("/a", A), Sink(), None).send_end()
    answer(dialer.made[0][1], OK)
    p.open(request("/b", B), Sink(), None).send_end()
    assert [e for e, _, _ in dialer.made] == [A, B]
    assert p.idle_count(A) == 1


def test_max_connections_bounds_the_destination_across_endpoints() -> None:
    """The destination's circuit breakers count every endpoint: with one connection
    busy to A and none waiting allowed, a request for B gets 503 ``overflow``."""
    p, dialer, clock = pool(PoolLimits(max_connections=1, max_pending=0))
    p.open(request("/a", A), Sink(), None).send_end()
    sink = Sink()
    p.open(request("/b", B), sink, None)
    clock.advance(0)
    assert sink.failure.status == 503 and sink.failure.reason == "overflow"
    assert len(dialer.made) == 1


def test_a_hashed_waiting_request_waits_for_its_endpoint() -> None:
    """At max_connections, a request hashed to B does not take A's freed connection:
    A's connection parks idle and B is dialled for it. An unhashed waiting request
    takes whichever connection comes free."""
    p, dialer, _ = pool(PoolLimits(max_connections=1, max_pending=4))
    p.open(request("/a", A), Sink(), None).send_end()
    hashed = Sink()
    p.open(request("/h", B, hashed=True), hashed, None).send_end()
    assert len(dialer.made) == 1
    answer(dialer.made[0][1], OK)
    assert p.idle_count(A) == 1
    assert [e for e, _, _ in dialer.made] == [A, B]
    (_, b_transport) = dialer.to(B)[0]
    assert b_transport.value().startswith(b"GET /h ")
    plain = Sink()
    p.open(request("/p", A), plain, None).send_end()  # reuses A's idle connection
    waiting = Sink()
    p.open(request("/w", B), waiting, None).send_end()  # full: waits, any endpoint
    ((_, a_transport),) = dialer.to(A)
    a_transport.clear()
    answer(dialer.made[0][1], OK)
    assert a_transport.value().startswith(b"GET /w ") and len(dialer.made) == 2


def test_retain_closes_idle_connections_of_endpoints_that_left() -> None:
    """The catalog dropped B: B's idle connection closes, A's stays."""
    p, dialer, _ = pool(PoolLimits())
    for path, endpoint in (("/a", A), ("/b", B)):
        p.open(request(path, endpoint), Sink(), None).send_end()
    for _, protocol, _ in dialer.made:
        answer(protocol, OK)
    p.retain({A})
    assert [t.disconnecting for _, _, t in dialer.made] == [False, True]
    assert (p.idle_count(A), p.idle_count(B)) == (1, 0)


def test_a_request_that_waited_dials_the_endpoints_of_now() -> None:
    """A request queued behind max_connections is given its endpoint order again when
    it dials: A left the catalog meanwhile, so B is dialled, not the A chosen before."""
    chosen = [A, B]

    def moving_plan(owner: Any, req: HttpRequest) -> Choice:
        return Choice(tuple(chosen))

    clock, dialer = Clock(), Dialer()
    p = Http1Pool(clock, dialer.dial, PoolLimits(max_connections=1), plan=moving_plan)
    p.open(request("/first", A), Sink(), None).send_end()
    waiting = Sink()
    p.open(request("/second", A), waiting, None).send_end()
    chosen[:] = [B]
    answer(dialer.made[0][1], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert [e for e, _, _ in dialer.made] == [A, B]
    assert dialer.made[1][2].value().startswith(b"GET /second ")


def test_waiting_requests_are_served_in_order_across_endpoints() -> None:
    """A request hashed to B waits first, an unhashed one behind it: A's freed
    connection is not handed past the first to the second (which could starve the
    first under load); it parks, B is dialled for the first, and the second takes the
    next connection to come free."""
    p, dialer, _ = pool(PoolLimits(max_connections=1, max_pending=4))
    p.open(request("/a", A), Sink(), None).send_end()
    first, second = Sink(), Sink()
    p.open(request("/h", B, hashed=True), first, None).send_end()
    p.open(request("/u", A), second, None).send_end()
    answer(dialer.made[0][1], OK)
    assert [e for e, _, _ in dialer.made] == [A, B]
    assert dialer.made[1][2].value().startswith(b"GET /h ")
    ((_, a_transport),) = dialer.to(A)
    assert b"GET /u " not in a_transport.value() and p.idle_count(A) == 1
    answer(dialer.made[1][1], OK)
    assert first.ended and dialer.made[1][2].value().count(b"GET /u ") == 1


def test_a_warning_endpoint_keeps_its_idle_connection_for_its_requests() -> None:
    """A goes from passing to warning (still usable): retain keeps A's idle connection
    and files it under A's new entry, so a request planned for A(warning) reuses it;
    B, now critical, loses its idle connection at once."""
    a_warning = Endpoint("127.0.0.1", A.port, health=Health.WARNING)
    b_critical = Endpoint("127.0.0.1", B.port, health=Health.CRITICAL)
    chosen = [A]
    clock, dialer = Clock(), Dialer()
    p = Http1Pool(clock, dialer.dial, PoolLimits(), plan=lambda o, r: Choice(tuple(chosen)))
    p.open(request("/a", A), Sink(), None).send_end()
    chosen[:] = [B]
    p.open(request("/b", B), Sink(), None).send_end()
    for _, protocol, _ in dialer.made:
        answer(protocol, OK)
    p.retain({a_warning, b_critical})
    assert [t.disconnecting for _, _, t in dialer.made] == [False, True]
    assert p.idle_count(a_warning) == 1
    chosen[:] = [a_warning]
    p.open(request("/again", A), Sink(), None).send_end()
    assert len(dialer.made) == 2 and dialer.made[0][2].value().endswith(
        b"GET /again HTTP/1.1\r\nhost: svc\r\nx-to: 8001\r\n\r\n"
    )


def test_an_unhashed_waiting_request_takes_only_a_connection_to_a_usable_endpoint() -> None:
    """At max_connections, A's freed connection is not handed to a waiting request when
    A is no longer usable for it (``usable`` says B only): A's connection parks and
    the request dials its own order (B)."""
    usable = [A, B]
    clock, dialer = Clock(), Dialer()
    p = Http1Pool(
        clock, dialer.dial, PoolLimits(max_connections=1), plan=plan, usable=lambda o: usable
    )
    p.open(request("/a", A), Sink(), None).send_end()
    waiting = Sink()
    p.open(request("/w", B), waiting, None).send_end()  # plans (B, A); waits
    usable[:] = [B]
    answer(dialer.made[0][1], OK)
    assert [e for e, _, _ in dialer.made] == [A, B]
    assert dialer.made[1][2].value().startswith(b"GET /w ")
    assert b"GET /w " not in dialer.made[0][2].value()


def test_retire_closes_idle_connections_and_drains_busy_ones() -> None:
    """A was ejected: its idle connection closes at once; its busy one finishes its
    exchange and then closes instead of parking. B's connection is untouched."""
    p, dialer, _ = pool(PoolLimits())
    p.open(request("/a1", A), Sink(), None).send_end()
    answer(dialer.made[0][1], OK)  # idle now
    busy = Sink()
    p.open(request("/a2", A), Sink(), None).send_end()  # reuses it
    p.open(request("/a3", A), busy, None).send_end()  # a second connection to A
    p.open(request("/b", B), Sink(), None).send_end()
    answer(dialer.made[0][1], OK)  # /a2 done: A's first connection idle again
    p.retire(A)
    transports = [t for _, _, t in dialer.made]
    assert [t.disconnecting for t in transports] == [True, False, False]
    answer(dialer.made[1][1], OK)
    assert busy.ended and transports[1].disconnecting and p.idle_count(A) == 0
    assert not transports[2].disconnecting
