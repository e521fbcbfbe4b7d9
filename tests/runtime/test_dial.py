"""gwcore.runtime.dial: the endpoint-and-connect step on its own, without a site: endpoints
tried in the picker's order up to ``max_connect_attempts``, failures counted and reported
as events, consecutive failures eject an endpoint, success counted with its retries, and
a service that leaves the routes loses its endpoint gauges (in memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from gwcore.contract.events import ConnectionInfo
from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.policy.model import Destination, Endpoint, Health, ServiceName
from gwcore.policy.routes import RouteTable
from gwcore.runtime.dial import Dialer
from gwcore.testing import TRUST_DOMAIN, site_config
from tests.harness import sample_sum

BILLING = ServiceName("billing")


class Strategy:
    """Refuses the addresses in ``refuse``; connects the others at once."""

    name = "test"

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.dialled: list[str] = []

    def applies_to(self, destination: Destination) -> bool:
        return True

    def connect(self, destination: Destination, endpoint: Endpoint, factory: Any, timeout: float):
        self.dialled.append(endpoint.address)
        if endpoint.address in self.refuse:
            return fail(ConnectionRefusedError())
        return succeed(object())


@dataclass
class Events:
    sent: list[tuple[str, Any]] = field(default_factory=list)

    def has_listeners(self, hook: str) -> bool:
        return True

    def dispatch(self, hook: str, event: Any) -> None:
        self.sent.append((hook, event))


@dataclass
class Conn:
    destination: Destination
    info: ConnectionInfo = field(
        default_factory=lambda: ConnectionInfo("main", 1, "127.0.0.1", 50000, 0.0)
    )
    upstream: Any = None
    endpoint: Endpoint | None = None


def dialer(tmp_path: Path, strategy: Strategy, **site: Any) -> tuple[Dialer, Events]:
    metrics = GatewayMetrics()
    events = Events()
    step = Dialer(
        site_config(tmp_path, **site),
        MemoryReactorClock(),
        metrics,
        SiteChildren(metrics, "main"),
        Logger(),
        events,
    )
    step.strategies = [strategy]
    return step, events


def sample(step: Dialer, name: str, **labels: str) -> float | None:
    return sample_sum(step.metrics.registry, name, {"site": "main", **labels})


def test_a_refused_endpoint_is_retried_on_the_next_and_counted(tmp_path: Path) -> None:
    """The first endpoint refuses, the second connects: one failure and one retry counted,
    a failed then a connected event sent, the connection's protocol handed back."""
    billing = Destination(BILLING, "dc1", (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)))
    strategy = Strategy({"10.0.0.1"})
    step, events = dialer(tmp_path, strategy)
    results: list[Any] = []
    step.connect(Conn(billing), factory_for=lambda strategy: None).addCallback(results.append)
    assert strategy.dialled == ["10.0.0.1", "10.0.0.2"]
    assert results and results[0][1] == Endpoint("10.0.0.2", 80) and results[0][2] == 2
    assert [hook for hook, _ in events.sent] == [
        "tgw_choose_endpoint",  # asked first: an addon may reorder the candidates
        "tgw_upstream_failed",
        "tgw_upstream_connected",
    ]
    failures = sample(
        step, "tgw_upstream_connect_failures_total", service="billing", reason="refused"
    )
    assert failures == 1.0
    assert sample(step, "tgw_upstream_retries_total", service="billing") == 1.0


def test_consecutive_failures_eject_an_endpoint_and_the_gauges_say_so(tmp_path: Path) -> None:
    """After ``outlier_consecutive_failures`` refusals the endpoint is ejected: counted,
    and the exported gauges show one ejected of two; once the service leaves the route
    table its gauges are removed."""
    billing = Destination(BILLING, "dc1", (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)))
    step, _ = dialer(
        tmp_path, Strategy({"10.0.0.1"}), outlier_consecutive_failures=1, max_connect_attempts=1
    )
    for _ in range(2):  # round robin: one of the two tries lands on the refusing endpoint
        step.connect(Conn(billing), factory_for=lambda strategy: None).addErrback(lambda _: None)
    assert sample(step, "tgw_upstream_ejections_total", service="billing") == 1.0
    gauge = "tgw_upstream_endpoints"
    assert sample(step, gauge, service="billing", state="ejected") == 1.0
    assert sample(step, gauge, service="billing", state="healthy") == 1.0
    routes = RouteTable.build((billing,), "dc1", TRUST_DOMAIN, "1")
    step.routes_installed(routes, RouteTable.empty(), ())
    assert sample(step, gauge, service="billing", state="total") is None


def test_no_endpoint_reachable_fails_and_counts_unavailable(tmp_path: Path) -> None:
    """Every endpoint refuses: the Deferred fails and the service counts as unavailable."""
    billing = Destination(BILLING, "dc1", (Endpoint("10.0.0.1", 80),))
    step, _ = dialer(tmp_path, Strategy({"10.0.0.1"}))
    failed: list[Any] = []
    d: Deferred[Any] = step.connect(Conn(billing), factory_for=lambda strategy: None)
    d.addErrback(failed.append)
    assert failed
    assert sample(step, "tgw_upstream_unavailable_total", service="billing") == 1.0


def test_an_ejection_is_told_to_the_ejected_listener(tmp_path: Path) -> None:
    """The dial step tells ``ejected`` which endpoint of which destination it ejected
    (the L7 pools stop using their connections to it)."""
    billing = Destination(BILLING, "dc1", (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80)))
    step, _ = dialer(
        tmp_path, Strategy({"10.0.0.1"}), outlier_consecutive_failures=1, max_connect_attempts=1
    )
    told: list[tuple[Destination, Endpoint]] = []
    step.ejected = lambda destination, endpoint: told.append((destination, endpoint))
    for _ in range(2):  # round robin: one of the two tries lands on the refusing endpoint
        step.connect(Conn(billing), factory_for=lambda strategy: None).addErrback(lambda _: None)
    assert [(d.name, e) for d, e in told] == [(billing.name, Endpoint("10.0.0.1", 80))]


class Hop(Strategy):
    """Dials its own addresses (as the mesh-gateway hop dials mesh gateways)."""

    def endpoints_for(self, destination: Destination) -> list[Endpoint]:
        return [Endpoint("10.9.9.9", 443)]


def test_dialled_endpoints_and_usable_are_those_the_strategy_dials(tmp_path: Path) -> None:
    """A strategy dialling its own addresses: ``dialled_endpoints`` and ``usable`` name
    those (what the L7 pools' connections are to), not the destination's endpoints;
    a plain strategy: the destination's non-critical endpoints."""
    billing = Destination(
        BILLING,
        "dc1",
        (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, health=Health.CRITICAL)),
    )
    hop, _ = dialer(tmp_path, Hop(set()))
    assert list(hop.dialled_endpoints(billing)) == [Endpoint("10.9.9.9", 443)]
    assert hop.usable(Conn(billing)) == [Endpoint("10.9.9.9", 443)]
    plain, _ = dialer(tmp_path, Strategy(set()))
    assert list(plain.dialled_endpoints(billing)) == list(billing.endpoints)
    assert plain.usable(Conn(billing)) == [Endpoint("10.0.0.1", 80)]
