"""gwcore.runtime.accept: the accept step on its own: admission up to ``max_connections``
(the next one refused and counted as overflow), release, a real loopback listener on an
ephemeral port, and draining that closes what is left when the drain time is up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.runtime.accept import Acceptor
from gwcore.testing import site_config


@dataclass(eq=False)
class Conn:
    closed: list[str] = field(default_factory=list)

    def close(self, cause: str) -> None:
        self.closed.append(cause)


def acceptor(tmp_path: Path, clock: object, **site: object) -> Acceptor:
    metrics = GatewayMetrics()
    return Acceptor(
        site_config(tmp_path, **site),
        clock,
        metrics,
        SiteChildren(metrics, "main"),
        protocol.ServerFactory,
    )


def test_admission_stops_at_max_connections_and_release_makes_room(tmp_path: Path) -> None:
    """Two admitted, the third refused and counted as overflow; one released, one more in."""
    step = acceptor(tmp_path, MemoryReactorClock(), max_connections=2)
    first, second, third = Conn(), Conn(), Conn()
    assert step.admit(first) and step.admit(second)
    assert not step.admit(third)
    refused = step.metrics.registry.get_sample_value(
        "tgw_downstream_rejected_total", {"site": "main", "reason": "overflow"}
    )
    assert refused == 1.0
    step.release(first)
    step.release(first)  # twice is once
    assert step.admit(third)
    assert step.active == {second, third}


@pytest_twisted.ensureDeferred
async def test_listen_on_loopback_then_drain_closes_what_is_left(tmp_path: Path) -> None:
    """The acceptor listens on an ephemeral loopback port; draining stops listening and,
    the drain time up, closes the connections still open with cause ``shutdown``."""
    step = acceptor(tmp_path, reactor)
    await step.listen()
    host, port = step.address() or ("", 0)
    assert host == "127.0.0.1" and port > 0 and step.listening
    stuck = Conn()
    step.admit(stuck)
    drained: Deferred[None] = Deferred.fromCoroutine(step.drain(0.05))
    reactor.callLater(0.2, step.release, stuck)  # closing completes later, as a real one does
    await drained
    assert not step.listening
    assert stuck.closed == ["shutdown"]
