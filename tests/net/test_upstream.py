"""Tests for gwcore.net.upstream: strategy choice, the connect-retry loop (with attempts
fired by hand), cancellation, and classifying connect errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gwcore.net.upstream import (
    PlainTCPStrategy,
    UpstreamConnectError,
    choose_strategy,
    classify_connect_error,
    connect_first_available,
    tcp_endpoint,
)
from gwcore.policy.model import Destination, Endpoint, ServiceName, UpstreamTLS

PLAIN = Destination(ServiceName("billing"), "dc1")
TLS = Destination(ServiceName("ledger"), "dc1", tls=UpstreamTLS(ca_file="/etc/ca.pem"))
ENDPOINTS = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80))
FACTORY = Factory.forProtocol(Protocol)


@dataclass
class HandFiredStrategy:
    """Each connect returns a Deferred the test fires; cancelling one is recorded."""

    name: str = "by-hand"
    applies: bool = True
    attempts: list[tuple[Endpoint, Deferred[Any]]] = field(default_factory=list)
    cancelled: list[Endpoint] = field(default_factory=list)

    def applies_to(self, destination: Destination) -> bool:
        return self.applies

    def connect(
        self, destination: Destination, endpoint: Endpoint, factory: Any, timeout: float
    ) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(endpoint))
        self.attempts.append((endpoint, d))
        return d

    def tried(self) -> list[Endpoint]:
        return [endpoint for endpoint, _ in self.attempts]

    def fail_last(self, exc: Exception) -> None:
        self.attempts[-1][1].errback(Failure(exc))


@dataclass
class Run:
    """One call of connect_first_available with a hand-fired strategy and a fake clock."""

    strategy: HandFiredStrategy = field(default_factory=HandFiredStrategy)
    clock: Clock = field(default_factory=Clock)
    failures: list[tuple[Endpoint, str, str, bool]] = field(default_factory=list)
    outcome: list[Any] = field(default_factory=list)

    def start(self, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> Deferred[Any]:
        d = connect_first_available(
            self.strategy,
            PLAIN,
            endpoints,
            FACTORY,
            2.0,
            lambda *args: self.failures.append(args),
            clock=self.clock.seconds,
        )
        d.addBoth(self.outcome.append)
        return d

    def error(self) -> BaseException:
        [result] = self.outcome
        assert isinstance(result, Failure), result
        return result.value


# --- choosing a strategy --------------------------------------------------------------


def test_choose_strategy_picks_the_first_applicable_in_order() -> None:
    skipped = HandFiredStrategy("skipped", applies=False)
    first = HandFiredStrategy("first")
    second = HandFiredStrategy("second")
    assert choose_strategy([skipped, first, second], PLAIN) is first


def test_plain_strategy_applies_only_without_a_ca_file() -> None:
    plain = PlainTCPStrategy(MemoryReactorClock())
    assert plain.applies_to(PLAIN)
    assert not plain.applies_to(TLS)
    assert choose_strategy([plain], PLAIN) is plain


def test_tls_destination_with_only_the_plain_strategy_is_refused_by_name() -> None:
    """Never fall back to plaintext when the catalog asks for TLS origination."""
    with pytest.raises(UpstreamConnectError) as raised:
        choose_strategy([PlainTCPStrategy(MemoryReactorClock())], TLS)
    assert raised.value.reason == "no_strategy"
    assert "ledger" in raised.value.detail and "tls" in raised.value.detail


@pytest.mark.parametrize(
    ("address", "kind"),
    [("10.1.2.3", TCP4ClientEndpoint), ("fd00::1", TCP6ClientEndpoint)],
)
def test_plain_strategy_connects_to_ip_literals_with_the_timeout(address: str, kind: type) -> None:
    reactor = MemoryReactorClock()
    assert isinstance(tcp_endpoint(reactor, Endpoint(address, 8080), 2.5), kind)
    PlainTCPStrategy(reactor).connect(PLAIN, Endpoint(address, 8080), FACTORY, 2.5)
    [(host, port, _, timeout, _)] = reactor.tcpClients
    assert (host, port, timeout) == (address, 8080, 2.5)


def test_hostnames_get_a_resolving_endpoint() -> None:
    assert isinstance(
        tcp_endpoint(MemoryReactorClock(), Endpoint("db.example", 5432), 1), HostnameEndpoint
    )


# --- the connect loop -----------------------------------------------------------------


def test_endpoints_are_tried_in_order_until_one_connects() -> None:
    run = Run()
    run.start()
    assert run.strategy.tried() == [ENDPOINTS[0]], "one attempt at a time"
    run.strategy.fail_last(neterror.ConnectionRefusedError())
    assert run.strategy.tried() == list(ENDPOINTS[:2])
    assert run.outcome == []
    run.clock.advance(0.25)
    protocol = Protocol()
    run.strategy.attempts[-1][1].callback(protocol)
    assert run.outcome == [(protocol, ENDPOINTS[1], 2, 0.25)]
    assert run.strategy.tried() == list(ENDPOINTS[:2]), "no attempt after the first success"
    [(endpoint, reason, detail, final)] = run.failures
    assert (endpoint, reason, final) == (ENDPOINTS[0], "refused", False)
    assert "refused" in detail.lower()


def test_every_failed_attempt_is_reported_and_the_last_is_final() -> None:
    run = Run()
    run.start()
    errors = [neterror.ConnectionRefusedError(), neterror.TimeoutError(), ValueError("odd")]
    for exc in errors:
        run.strategy.fail_last(exc)
    assert run.strategy.tried() == list(ENDPOINTS)
    assert [(e, r, f) for e, r, _, f in run.failures] == [
        (ENDPOINTS[0], "refused", False),
        (ENDPOINTS[1], "timeout", False),
        (ENDPOINTS[2], "error", True),
    ]
    error = run.error()
    assert isinstance(error, UpstreamConnectError)
    assert error.reason == "unavailable"
    assert "all 3 attempts failed" in error.detail and "odd" in error.detail


def test_a_strategy_raising_synchronously_counts_as_a_failed_attempt() -> None:
    run = Run()

    def connect(*args: Any) -> Deferred[Any]:
        raise UpstreamConnectError("tls", "bad upstream certificate")

    run.strategy.connect = connect  # type: ignore[method-assign]
    run.start(ENDPOINTS[:1])
    assert [(r, d, f) for _, r, d, f in run.failures] == [("tls", "bad upstream certificate", True)]
    assert run.error().reason == "unavailable"  # type: ignore[attr-defined]


def test_no_endpoints_fails_with_no_endpoints() -> None:
    run = Run()
    run.start(())
    error = run.error()
    assert isinstance(error, UpstreamConnectError) and error.reason == "no_endpoints"
    assert "billing" in error.detail
    assert run.strategy.attempts == [] and run.failures == []


def test_cancelling_cancels_the_attempt_in_flight_and_tries_no_other() -> None:
    """The client left: the pending connect is abandoned, not reported as a failure."""
    run = Run()
    d = run.start()
    run.strategy.fail_last(neterror.ConnectionRefusedError())
    d.cancel()
    assert run.strategy.cancelled == [ENDPOINTS[1]]
    assert isinstance(run.error(), CancelledError)
    assert run.strategy.tried() == list(ENDPOINTS[:2])
    assert len(run.failures) == 1


def test_a_strategy_written_as_a_coroutine_is_awaited_like_a_deferred() -> None:
    """``async def connect`` strategies work: failures move on to the next endpoint,
    and the first success is the result (attempt count and elapsed time included)."""
    pending: list[Deferred[Any]] = []

    class AsyncStrategy(HandFiredStrategy):
        async def connect(self, destination, endpoint, factory, timeout):  # type: ignore[override]
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return await d

    run = Run(strategy=AsyncStrategy())
    run.start()
    pending[0].errback(Failure(neterror.ConnectionRefusedError()))
    run.clock.advance(0.25)
    protocol = Protocol()
    pending[1].callback(protocol)
    [(got, endpoint, attempts, seconds)] = run.outcome
    assert (got, endpoint, attempts, seconds) == (protocol, ENDPOINTS[1], 2, 0.25)
    assert [f[1] for f in run.failures] == ["refused"]


# --- classifying errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (neterror.ConnectionRefusedError(), "refused"),
        (neterror.TimeoutError(), "timeout"),
        (neterror.DNSLookupError("db.example"), "dns"),
        (UpstreamConnectError("tls", "handshake failed"), "tls"),
        (TimeoutError(), "timeout"),
        (RuntimeError("anything else"), "error"),
    ],
)
def test_classify_connect_error(exc: BaseException, reason: str) -> None:
    assert classify_connect_error(exc) == reason
