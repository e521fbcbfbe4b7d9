"""Contract tests of the Consul double's mesh-gateway endpoints (gwcore/testing/consul_mesh.py):
``/v1/health/connect/<svc>``, ``?dc=`` across federated doubles, ``/v1/catalog/datacenters``
and ``/v1/internal/federation-states/mesh-gateways``, over real HTTP on 127.0.0.1, with
blocking queries that return when (and only when) the answer changed."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.net.consul import ConsulClient, ConsulError, ConsulSettings
from gwcore.testing.consul import ConsulDouble
from gwcore.testing.consul_mesh import federate


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coro))


def node(name: str, service: dict[str, Any], status: str = "passing") -> dict[str, Any]:
    sid = service.get("ID") or service["Service"]
    return {
        "Node": name,
        "Address": "10.0.0.1",
        "Service": service,
        "Checks": [{"CheckID": f"{sid}-c", "Name": "c", "Status": status, "ServiceID": sid}],
    }


@pytest.fixture
def dcs() -> Any:
    one = ConsulDouble(reactor, datacenter="dc1", jitter=False)
    two = ConsulDouble(reactor, datacenter="dc2", jitter=False)
    _block(one.start())
    _block(two.start())
    federate(one, two)
    one.register(node("n-api", {"ID": "api-1", "Service": "api", "Port": 80}))
    one.register(node("n-api", {"ID": "api-sidecar", "Service": "api-sidecar-proxy",
                                "Kind": "connect-proxy", "Port": 21000,
                                "Proxy": {"DestinationServiceName": "api"}}))  # fmt: skip
    one.register(node("n-native", {"ID": "pay-1", "Service": "pay", "Port": 90,
                                   "Connect": {"Native": True}}))  # fmt: skip
    one.register(node("n-ext", {"ID": "billing-1", "Service": "billing", "Port": 443}))
    one.register(node("n-tgw", {"ID": "tgw-1", "Service": "tgw", "Kind": "terminating-gateway",
                                "Port": 8443}))  # fmt: skip
    one.link("tgw", "billing")
    two.register(node("n-mgw", {"ID": "mgw-1", "Service": "mesh-gateway",
                                "Kind": "mesh-gateway", "Port": 443}))  # fmt: skip
    yield one, two
    _block(one.stop())
    _block(two.stop())


def _client(double: ConsulDouble) -> ConsulClient:
    return ConsulClient(reactor, ConsulSettings(address=double.address, wait=2.0, timeout=4.0))


async def _get(double: ConsulDouble, path: str, *query: tuple[str, str]) -> Any:
    client = _client(double)
    try:
        return await client.get("contract", path, query)
    finally:
        await client.close()


def _ids(answer: list[dict[str, Any]]) -> list[str]:
    return [item["Service"]["ID"] for item in answer]


@pytest_twisted.ensureDeferred
async def test_health_connect_lists_sidecars_natives_and_linking_gateways(dcs):
    """/v1/health/connect/<svc>: the sidecar (with its Proxy), a Connect-native instance,
    the terminating gateway linking the service; a plain service alone is not listed."""
    one, _ = dcs
    api = (await _get(one, "/v1/health/connect/api")).json()
    assert _ids(api) == ["api-sidecar"]
    assert api[0]["Service"]["Proxy"]["DestinationServiceName"] == "api"
    assert set(api[0]) == {"Node", "Service", "Checks"}
    assert _ids((await _get(one, "/v1/health/connect/pay")).json()) == ["pay-1"]
    assert _ids((await _get(one, "/v1/health/connect/billing")).json()) == ["tgw-1"]
    assert (await _get(one, "/v1/health/connect/nothing")).json() == []


@pytest_twisted.ensureDeferred
async def test_health_connect_blocking_query_returns_on_unlink_and_removal(dcs):
    """A blocking health/connect query returns when the gateway is unlinked (the answer
    loses it), and again when the last sidecar of a service is deregistered."""
    one, _ = dcs
    client = _client(one)
    try:
        first = await client.get("c", "/v1/health/connect/billing")
        waiting = client.get("c", "/v1/health/connect/billing", index=first.index)
        one.link("tgw")
        unlinked = await waiting
        assert unlinked.index > first.index and unlinked.json() == []
        api = await client.get("c", "/v1/health/connect/api")
        waiting = client.get("c", "/v1/health/connect/api", index=api.index)
        one.deregister("n-api", "api-sidecar")
        gone = await waiting
        assert gone.index > api.index and gone.json() == []
        pay = await client.get("c", "/v1/health/connect/pay")
        assert pay.index < gone.index  # another service's removal does not move pay's
        quiet = await client.get("c", "/v1/health/connect/pay", index=pay.index, wait=0.3)
        assert quiet.index == pay.index  # nothing of pay changed: the wait expired
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_dc_query_is_answered_by_the_federated_datacenter(dcs):
    """?dc=dc2 on dc1's agent answers with dc2's catalog and blocks on dc2's index (a
    write in dc2 returns it); what dc2 refuses the token is a 403; a datacenter outside
    the federation, or one whose servers are down, is a 500."""
    one, two = dcs
    client = _client(one)
    try:
        first = await client.get("m", "/v1/health/service/mesh-gateway", [("dc", "dc2")])
        (item,) = first.json()
        assert item["Node"]["Datacenter"] == "dc2"
        waiting = client.get(
            "m", "/v1/health/service/mesh-gateway", [("dc", "dc2")], index=first.index
        )
        two.register(node("n-mgw2", {"ID": "mgw-2", "Service": "mesh-gateway",
                                     "Kind": "mesh-gateway", "Port": 443}))  # fmt: skip
        moved = await waiting
        assert _ids(moved.json()) == ["mgw-1", "mgw-2"]
        with pytest.raises(ConsulError, match="500"):
            await client.get("m", "/v1/health/service/mesh-gateway", [("dc", "dc9")])
        two.deny("/v1/health/service/mesh-gateway")  # dc2's servers check the token
        with pytest.raises(ConsulError, match="403"):
            await client.get("m", "/v1/health/service/mesh-gateway", [("dc", "dc2")])
        await two.down()
        with pytest.raises(ConsulError, match="500"):
            await client.get("m", "/v1/health/service/mesh-gateway", [("dc", "dc2")])
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_datacenters_and_federation_states(dcs):
    """/v1/catalog/datacenters lists the federation, own first, without an index (not a
    blocking endpoint); federation-states/mesh-gateways maps each datacenter with mesh
    gateways to them, and a blocking query on it returns when dc2's gateways change."""
    one, two = dcs
    datacenters = await _get(one, "/v1/catalog/datacenters")
    assert datacenters.json() == ["dc1", "dc2"] and datacenters.index == 0
    assert (await _get(two, "/v1/catalog/datacenters")).json() == ["dc2", "dc1"]
    client = _client(one)
    try:
        path = "/v1/internal/federation-states/mesh-gateways"
        first = await client.get("f", path)
        assert list(first.json()) == ["dc2"] and _ids(first.json()["dc2"]) == ["mgw-1"]
        waiting = client.get("f", path, index=first.index)
        two.deregister("n-mgw")
        moved = await waiting
        assert moved.index > first.index and moved.json() == {}
    finally:
        await client.close()
