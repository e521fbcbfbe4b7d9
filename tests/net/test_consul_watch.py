"""ServiceHealthWatches: one blocking /v1/health/service/<name> per service, at most
`limit` at once on a pool of their own, against the Consul double on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor

from gwcore.net.consul import ConsulSettings
from gwcore.net.consul_watch import ServiceHealthWatches, scope_query
from gwcore.testing.consul import ConsulDouble, find
from tests.harness import sleep


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not reached in time"
        await sleep(0.02)
        waited += 0.02


def test_scope_query_names_only_non_default_namespaces_and_partitions():
    """A CE agent gets no ns/partition parameters; Enterprise ones get what differs."""
    assert scope_query("default", "default") == []
    assert scope_query("finance", "default") == [("ns", "finance")]
    assert scope_query("default", "eu") == [("partition", "eu")]


@pytest_twisted.ensureDeferred
async def test_watches_block_per_service_within_the_limit_and_stop_cleanly():
    """Uses the Consul double. Three services, limit 2: two blocking queries are held
    (on at most two sockets), the third is overflow; a change to a watched service is
    delivered with its new index; stop ends every query and closes the pool."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    for name in ("a", "b", "c"):
        double.register({"Node": f"n-{name}", "Address": "10.0.0.1",
                         "Service": {"Service": name, "Port": 1}})  # fmt: skip
    changes: list[tuple[str, int]] = []
    settings = ConsulSettings(address=double.address, wait=2.0, timeout=2.0, rate=100.0)
    watches = ServiceHealthWatches(
        reactor, settings, 2, lambda s, r: changes.append((s, r.index)), lambda e: None
    )
    try:
        watches.update(["c", "b", "a"])
        assert watches.watched == {"a", "b"} and watches.overflow == ("c",)
        await _until(lambda: double.blocked == 2)
        assert double.open_connections <= 2
        before = len(find(double.requests, "/v1/health/service/c"))
        double.register({"Node": "n-a", "Address": "10.0.0.2"})
        await _until(lambda: sum(1 for s, _ in changes if s == "a") >= 2)
        assert len(find(double.requests, "/v1/health/service/c")) == before == 0
    finally:
        await watches.stop()
        await _until(lambda: double.blocked == 0)
        await double.stop()
