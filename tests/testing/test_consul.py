"""Contract tests of the Consul double: each endpoint's body has the shape of Consul's
API docs (reference §5 examples: exact keys and types), indexes move as catalog.go moves
them, and dc/ns/partition are honoured (issue 17 item 7). These tests are about the
double (gwcore/testing/consul.py) itself, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.contract import pki
from gwcore.net.consul import ConsulClient, ConsulError, ConsulSettings
from gwcore.testing.consul import ConsulDouble

NODE_KEYS = {"ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta",
             "CreateIndex", "ModifyIndex"}  # fmt: skip
SERVICE_KEYS = {"ID", "Service", "Tags", "Address", "Port", "Meta", "Weights",
                "EnableTagOverride", "Kind", "CreateIndex", "ModifyIndex"}  # fmt: skip
CHECK_KEYS = {"Node", "CheckID", "Name", "Status", "ServiceID", "ServiceName", "Output", "Type"}
ROOT_KEYS = {"ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain", "NotBefore",
             "NotAfter", "RootCert", "IntermediateCerts", "Active", "PrivateKeyType",
             "PrivateKeyBits", "CreateIndex", "ModifyIndex"}  # fmt: skip
LEAF_KEYS = {"SerialNumber", "CertPEM", "PrivateKeyPEM", "Service", "ServiceURI",
             "ValidAfter", "ValidBefore", "CreateIndex", "ModifyIndex"}  # fmt: skip
MATCH_KEYS = {"ID", "Description", "SourcePeer", "SourceSamenessGroup", "SourcePartition",
              "SourceNS", "SourceName", "DestinationPartition", "DestinationNS",
              "DestinationName", "SourceType", "Action", "Precedence", "Meta", "CreateIndex",
              "ModifyIndex"}  # fmt: skip
GATEWAY_SERVICE_KEYS = {"Gateway", "Service", "GatewayKind", "ServiceKind", "CreateIndex",
                        "ModifyIndex"}  # fmt: skip
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coro))


@pytest.fixture(params=[False, True], ids=["root-signs", "intermediate-signs"])
def consul(request: Any) -> Any:
    double = ConsulDouble(reactor, jitter=False, intermediate=request.param)
    _block(double.start())
    double.register(
        {"Node": "legacy_node", "Address": "10.0.0.9", "NodeMeta": {"external-node": "true"},
         "Service": {"ID": "billing-1", "Service": "billing", "Port": 443,
                     "Meta": {"version": "v1"}},
         "Checks": [{"CheckID": "billing-tcp", "Name": "billing tcp", "Status": "passing",
                     "ServiceID": "billing-1"}]}
    )  # fmt: skip
    double.link("legacy-gw", {"Name": "billing", "CAFile": "/ca.pem"})
    double.put_config(
        {"Kind": "service-intentions", "Name": "billing",
         "Sources": [{"Name": "web", "Action": "deny"},
                     {"Name": "*", "SamenessGroup": "g", "Action": "allow"}]}
    )  # fmt: skip
    yield double
    _block(double.stop())


def _client(double: ConsulDouble) -> ConsulClient:
    return ConsulClient(reactor, ConsulSettings(address=double.address, wait=1.0, timeout=2.0))


async def _get(double: ConsulDouble, path: str, *query: tuple[str, str]) -> Any:
    client = _client(double)
    try:
        response = await client.get("contract", path, query)
    finally:
        await client.close()
    if path != "/v1/agent/self":  # the one non-blocking endpoint here
        assert response.index >= 1  # every blocking endpoint's answer has X-Consul-Index
    return response.json()


@pytest_twisted.ensureDeferred
async def test_health_service_body(consul):
    """{Node, Service, Checks} with the documented keys of each part."""
    (item,) = await _get(consul, "/v1/health/service/billing")
    assert set(item) == {"Node", "Service", "Checks"}
    assert set(item["Node"]) == NODE_KEYS and set(item["Service"]) == SERVICE_KEYS
    assert item["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
    assert all(set(c) >= CHECK_KEYS for c in item["Checks"])


@pytest_twisted.ensureDeferred
async def test_gateway_services_body(consul):
    """Each item: Gateway{Name}, Service{Name}, GatewayKind, ServiceKind, the TLS keys set
    on the link (omitempty), CreateIndex and ModifyIndex."""
    (item,) = await _get(consul, "/v1/catalog/gateway-services/legacy-gw")
    assert set(item) == GATEWAY_SERVICE_KEYS | {"CAFile"}
    assert item["Gateway"] == {"Name": "legacy-gw"} and item["Service"] == {"Name": "billing"}
    assert (item["GatewayKind"], item["ServiceKind"]) == ("terminating-gateway", "service")


@pytest_twisted.ensureDeferred
async def test_roots_and_leaf_bodies(consul):
    """ca/roots and ca/leaf have the documented keys; SerialNumber is colon-hex; with an
    intermediate CA the root lists it and the leaf's CertPEM is leaf then intermediate."""
    roots = await _get(consul, "/v1/agent/connect/ca/roots")
    assert set(roots) == {"ActiveRootID", "TrustDomain", "Roots"}
    (root,) = roots["Roots"]
    assert set(root) == ROOT_KEYS and RFC3339.fullmatch(root["NotAfter"])
    leaf = await _get(consul, "/v1/agent/connect/ca/leaf/billing")
    assert set(leaf) == LEAF_KEYS
    assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2})*", leaf["SerialNumber"])
    chain = pki.load_certificates(leaf["CertPEM"].encode())
    if consul.intermediate:
        (intermediate,) = root["IntermediateCerts"]
        assert len(chain) == 2
        assert pki.certificate_pem(chain[1]).decode() == intermediate
        assert chain[0].issuer == chain[1].subject
    else:
        assert root["IntermediateCerts"] is None and len(chain) == 1


@pytest_twisted.ensureDeferred
async def test_intentions_match_body(consul):
    """A map keyed by the queried name, items with the documented keys (SourceSamenessGroup
    included) in precedence order; the source namespace is the destination's."""
    body = await _get(
        consul, "/v1/connect/intentions/match", ("by", "destination"), ("name", "billing")
    )
    assert list(body) == ["billing"]
    items = body["billing"]
    assert all(set(i) == MATCH_KEYS for i in items)
    assert [(i["SourceName"], i["Precedence"]) for i in items] == [("web", 9), ("*", 8)]
    assert items[1]["SourceSamenessGroup"] == "g"


@pytest_twisted.ensureDeferred
async def test_config_entry_body_and_404(consul):
    """A config entry read back carries Hash (a number), CreateIndex and ModifyIndex; a
    missing one is a 404."""
    entry = await _get(consul, "/v1/config/terminating-gateway/legacy-gw")
    assert isinstance(entry["Hash"], int) and entry["CreateIndex"] <= entry["ModifyIndex"]
    with pytest.raises(ConsulError, match="404"):
        await _get(consul, "/v1/config/terminating-gateway/nothing")


@pytest_twisted.ensureDeferred
async def test_catalog_and_agent_self_bodies(consul):
    """catalog/services maps names to tag lists; catalog/nodes lists node objects;
    agent/self has Config, DebugConfig (ACLsEnabled) and Member.Addr."""
    assert await _get(consul, "/v1/catalog/services") == {"billing": []}
    nodes = await _get(consul, "/v1/catalog/nodes")
    assert [set(n) for n in nodes] == [NODE_KEYS]
    me = await _get(consul, "/v1/agent/self")
    assert {"Config", "DebugConfig", "Member"} <= set(me)
    assert me["DebugConfig"]["ACLsEnabled"] is False and me["Member"]["Addr"]


@pytest_twisted.ensureDeferred
async def test_dc_and_namespace_are_honoured(consul):
    """?dc= naming another datacenter fails as an agent without a WAN path does; ?ns=
    selects the namespace's instances and leaves carry that namespace's SPIFFE ID."""
    with pytest.raises(ConsulError, match="500"):
        await _get(consul, "/v1/health/service/billing", ("dc", "dc9"))
    assert await _get(consul, "/v1/health/service/billing", ("ns", "finance")) == []
    leaf = await _get(consul, "/v1/agent/connect/ca/leaf/billing", ("ns", "finance"))
    assert "/ns/finance/" in leaf["ServiceURI"] and leaf["Namespace"] == "finance"


@pytest_twisted.ensureDeferred
async def test_a_node_move_wakes_the_service_but_not_the_services_table(consul):
    """A node-only re-register returns a blocking /v1/health/service query and leaves a
    blocking /v1/catalog/services query waiting (catalog.go's index rules)."""
    client = _client(consul)
    try:
        health = await client.get("h", "/v1/health/service/billing")
        services = await client.get("s", "/v1/catalog/services")
        waiting_health = client.get("h", "/v1/health/service/billing", index=health.index)
        waiting_services = client.get("s", "/v1/catalog/services", index=services.index, wait=0.5)
        body = {"Node": "legacy_node", "Address": "10.0.0.10",
                "NodeMeta": {"external-node": "true"}}  # fmt: skip
        consul.register(body)
        moved = await waiting_health
        assert moved.index > health.index
        assert moved.json()[0]["Node"]["Address"] == "10.0.0.10"
        unchanged = await waiting_services  # returns only when its wait expires
        assert unchanged.index == services.index
    finally:
        await client.close()
