"""consul_catalog sees every change of a linked service's instances, a node that moved
included (issue 17 item 1). Every test here runs against the Consul double
(gwcore/testing/consul.py), whose indexes follow Consul's catalog.go: a node update moves
the node's and its services' indexes, not the services or checks tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gwcore.plugins.consul_catalog import ConsulCatalogSource
from gwcore.testing import FakeSite, site_config
from gwcore.testing.consul import ConsulDouble, wait_deferred

CATALOG = "gwcore.plugins.consul_catalog"
FAST = {"wait": "2s", "timeout": "3s", "retry_min": "0.05s", "retry_max": "0.3s", "rate": 50}


def _register(double: ConsulDouble, node_address: str, service: str = "billing") -> None:
    """An external service without Service.Address: Consul uses the node's address."""
    double.register(
        {
            "Node": f"ext-{service}",
            "Address": node_address,
            "NodeMeta": {"external-node": "true"},
            "Service": {"ID": f"{service}-1", "Service": service, "Port": 443},
            "Checks": [
                {"CheckID": f"{service}-tcp", "Status": "passing", "ServiceID": f"{service}-1"}
            ],
        }
    )


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await wait_deferred(reactor, 0.02)
    raise AssertionError("condition not met in time")


def _addresses(published: list[Any], service: str) -> set[str]:
    if not published:
        return set()
    found = [d for d in published[-1].destinations if d.service.name == service]
    return {e.address for d in found for e in d.endpoints}


@pytest.mark.parametrize(
    "health_watches",
    [pytest.param(128, id="per-service-watch"), pytest.param(0, id="nodes-table-detector")],
)
@pytest_twisted.ensureDeferred
async def test_a_node_that_moves_is_seen(tmp_path: Path, health_watches: int) -> None:
    """Uses the Consul double. Re-registering only the node with a new Address (same
    service, same checks) reroutes the linked service to the new address, whether the
    service has its own blocking health query or is covered by the table detectors."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    _register(double, "10.0.0.1")
    _register(double, "10.0.1.1", "ldap")
    double.link("legacy-gw", "billing", "ldap")
    section = {"address": double.address, "register": False, **FAST}
    section["health_watches"] = health_watches
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    site = FakeSite(config, tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    try:
        await source.start(published.append)
        assert _addresses(published, "billing") == {"10.0.0.1"}
        services_before = double._topic("services")
        checks_before = double._topic("checks")
        _register(double, "10.0.0.2")
        # The double moved no table a pre-fix consul_catalog watched.
        assert double._topic("services") == services_before
        assert double._topic("checks") == checks_before
        await _until(lambda: _addresses(published, "billing") == {"10.0.0.2"})
        assert _addresses(published, "ldap") == {"10.0.1.1"}
    finally:
        await source.stop()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_watches_are_bounded_and_an_unlinked_service_frees_its_slot(tmp_path: Path):
    """Uses the Consul double. With health_watches = 2 and three linked services, two
    are watched by their own blocking query and one is overflow; unlinking a watched one
    promotes the overflow service, whose own change is then seen."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    for i, name in enumerate(("a", "b", "c")):
        _register(double, f"10.0.{i}.1", name)
    double.link("legacy-gw", "a", "b", "c")
    section = {"address": double.address, "register": False, "health_watches": 2, **FAST}
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    site = FakeSite(config, tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    try:
        await source.start(published.append)
        pool = source._health_watches
        assert pool is not None
        assert pool.watched == {"a", "b"} and pool.overflow == ("c",)
        double.link("legacy-gw", "b", "c")
        await _until(lambda: pool.watched == {"b", "c"} and pool.overflow == ())
        _register(double, "10.9.9.9", "c")
        await _until(lambda: _addresses(published, "c") == {"10.9.9.9"})
    finally:
        await source.stop()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_catalog_freshness_moves_on_every_blocking_answer_without_a_change(
    tmp_path: Path,
) -> None:
    """Uses the Consul double, which holds a blocking query for its ``wait`` and then
    answers with the same ``X-Consul-Index`` when nothing changed, as the agent does.
    With a quiet catalog each such answer is a successful check: it moves
    ``tgw_catalog_last_success_timestamp_seconds{source="consul_catalog"}`` (not only
    ``tgw_consul_last_success_timestamp_seconds``) while no new snapshot is published."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    _register(double, "10.0.0.1")
    double.link("legacy-gw", "billing")
    section = {"address": double.address, "register": False, **FAST, "wait": "0.2s"}
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    site = FakeSite(config, tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    labels = {"site": "main", "source": "consul_catalog"}

    def last_success() -> float:
        value = site.metrics.registry.get_sample_value(
            "tgw_catalog_last_success_timestamp_seconds", labels
        )
        assert value is not None
        return value

    try:
        await source.start(published.append)
        first = last_success()
        await _until(lambda: last_success() > first + 0.5, timeout=3)
        assert len(published) == 1  # nothing changed in the catalog
        assert source.health().ok
    finally:
        await source.stop()
        await double.stop()
