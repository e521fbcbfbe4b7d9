"""Self-registration's TCP check targets the address the service is registered with
(issue 17 item 6), so an agent in another network namespace can reach it. Runs against
the Consul double (gwcore/testing/consul.py), which records each agent registration and
answers /v1/agent/self with its node address as Member.Addr."""

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


@pytest.mark.parametrize(
    ("listener", "options", "target"),
    [
        pytest.param("0.0.0.0:8443", {}, "10.1.2.3:8443", id="wildcard-uses-node-address"),
        pytest.param("10.0.0.5:8443", {}, "10.0.0.5:8443", id="bound-address"),
        pytest.param("0.0.0.0:8443", {"register_address": "10.0.0.7"}, "10.0.0.7:8443",
                     id="register-address"),
        pytest.param("0.0.0.0:8443", {"check_address": "tgw.internal"}, "tgw.internal:8443",
                     id="check-address"),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_the_check_targets_the_registered_address(
    tmp_path: Path, listener: str, options: dict[str, Any], target: str
) -> None:
    """Uses the Consul double. The TCP check names the registered address (for a
    wildcard bind, the agent's node address from /v1/agent/self, which Consul gives a
    service registered without one), or check_address when set; never 127.0.0.1."""
    double = ConsulDouble(reactor, jitter=False, node_address="10.1.2.3")
    await double.start()
    section = {"address": double.address, **FAST, **options}
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    site = FakeSite(config, tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    source._running = True
    from gwcore.net.consul import acquire_client, release_client

    source.client = acquire_client(reactor, source.settings.consul)
    try:
        source.register(listener)
        for _ in range(100):
            if double.agent_services:
                break
            await wait_deferred(reactor, 0.02)
        (body,) = double.agent_services.values()
        assert body["Check"]["TCP"] == target
    finally:
        source._running = False
        await release_client(source.client)
        await double.stop()
