"""gwcore.runtime.forward: the forward step on its own: bytes counted once each (sweep and
close), an idle splice closed after ``idle_timeout`` on the injected clock, and at close
one access-log record and one ``tgw_connection_closed`` event (in memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.net.splice import State
from gwcore.policy.model import Destination, Endpoint, ServiceName
from gwcore.runtime.forward import Forwarder
from gwcore.testing import site_config
from tests.harness import sample_sum


@dataclass(eq=False)
class Conn:
    destination: Destination = field(
        default_factory=lambda: Destination(ServiceName("billing"), "dc1", ())
    )
    endpoint: Endpoint | None = field(default_factory=lambda: Endpoint("10.0.0.1", 80))
    state: State = State.SPLICING
    bytes_up: int = 0
    bytes_down: int = 0
    reported_up: int = 0
    reported_down: int = 0
    idle_mark: tuple[int, float] = (0, 0.0)
    started: float = 0.0
    idled: int = 0
    close_cause: str | None = None

    def close_idle(self) -> None:
        self.idled += 1
        self.state = State.CLOSED

    def access_record(self) -> dict[str, Any]:
        return {"up": self.bytes_up}

    def closed_event(self, record: dict[str, Any]) -> Any:
        return ("closed", record)


@dataclass
class Events:
    sent: list[tuple[str, Any]] = field(default_factory=list)

    def has_listeners(self, hook: str) -> bool:
        return True

    def dispatch(self, hook: str, event: Any) -> None:
        self.sent.append((hook, event))


def forwarder(tmp_path: Path, live: list[Conn], **site: Any) -> tuple[Forwarder, Any, Any]:
    metrics = GatewayMetrics()
    clock = MemoryReactorClock()
    records: list[dict[str, Any]] = []
    step = Forwarder(
        site_config(tmp_path, **site),
        clock,
        SiteChildren(metrics, "main"),
        Logger(),
        Events(),
        records.append,
        lambda: live,
    )
    return step, clock, records


def upstream_bytes(step: Forwarder) -> float | None:
    return sample_sum(
        step.children.metrics.registry,
        "tgw_bytes_total",
        {"site": "main", "service": "billing", "direction": "upstream"},
    )


def test_bytes_are_counted_once_by_sweep_and_close(tmp_path: Path) -> None:
    """100 bytes seen by a sweep, 50 more at close: the counter says 150, not 250."""
    conn = Conn(bytes_up=100)
    step, _, records = forwarder(tmp_path, [conn])
    step.sweep()
    assert upstream_bytes(step) == 100.0
    conn.bytes_up = 150
    step.closed(conn)
    assert upstream_bytes(step) == 150.0
    assert records == [{"up": 150}]
    assert step._events.sent == [("tgw_connection_closed", ("closed", {"up": 150}))]


def test_an_idle_splice_is_closed_after_idle_timeout(tmp_path: Path) -> None:
    """No byte moves for ``idle_timeout``: the sweep closes the connection; one that
    moves bytes is left alone. The sweep runs every idle_timeout/4 on the clock."""
    idle, busy = Conn(), Conn()
    step, clock, _ = forwarder(tmp_path, [idle, busy], idle_timeout="8s")
    assert step.sweep_interval() == 2.0
    step.start()
    for _ in range(6):
        busy.bytes_down += 1
        clock.advance(2.0)
    step.stop()
    assert idle.idled == 1 and busy.idled == 0
