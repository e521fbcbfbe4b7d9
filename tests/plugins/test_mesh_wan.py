"""Other datacenters' gateways are dialled at their WAN address (Consul's
``CheckServiceNode.BestAddress(wan=true)``), by a mesh site and by the ``mesh_hop``
strategy, end to end on 127.0.0.1 with real TLS.

The catalog documents are what the Consul double's ``/v1/health/service/mesh-gateway``
answers for dc2 (node and service ``TaggedAddresses`` as Consul stores them), so the
shapes are Consul's own. The LAN address of each registration leads nowhere (nothing
listens there); only the WAN address is served."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from gwcore.policy.consul_shapes import parse_documents
from gwcore.testing.consul import ConsulDouble
from tests.harness import (
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    sni_for,
    tls_connect,
)
from tests.multidc import Federation, federation, gateway_instance, service_in, settle, spiffe

__all__ = ["federation"]

BODY = b"ledger of dc2\n" * 2000


def wan_registration(form: str, port: int) -> dict:
    """dc2's mesh gateway as Consul stores it: LAN unreachable, WAN served at ``port``.

    ``service``: ``Service.TaggedAddresses.wan`` carries address *and* port (the LAN port
    is closed). ``node``: only the node's ``TaggedAddresses.wan`` (the LAN node address
    127.0.0.2 has no listener; the port is the service's)."""
    if form == "service":
        return {
            "Node": "mgw-dc2",
            "Address": "127.0.0.1",
            "Service": {
                "ID": "mgw",
                "Service": "mesh-gateway",
                "Kind": "mesh-gateway",
                "Address": "127.0.0.1",
                "Port": free_port(),
                "TaggedAddresses": {
                    "lan": {"Address": "127.0.0.1", "Port": 1},
                    "wan": {"Address": "127.0.0.1", "Port": port},
                },
            },
        }
    return {
        "Node": "mgw-dc2",
        "Address": "127.0.0.2",
        "TaggedAddresses": {"lan": "127.0.0.2", "wan": "127.0.0.1"},
        "Service": {"ID": "mgw", "Service": "mesh-gateway", "Kind": "mesh-gateway", "Port": port},
    }


def from_consul(form: str, port: int) -> list[dict]:
    """``GET /v1/health/service/mesh-gateway`` of a dc2 Consul (the double)."""
    double = ConsulDouble(reactor, datacenter="dc2", jitter=False)
    double.register(wan_registration(form, port))
    answer = double.health_of("mesh-gateway")
    assert answer and answer[0]["Node"]["Datacenter"] == "dc2"
    return answer


async def dc2(fed: Federation, upstreams, sources: tuple[str, ...]):
    up = upstreams(hello(BODY))
    tgw2 = await fed.start(
        "tgw-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            service_in("billing", up.port, "dc2"),
            intentions("billing", *((s, "allow") for s in sources)),
        ],
    )
    mesh2 = await fed.start(
        "mesh-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            gateway_instance("terminating-gateway", "tgw-dc2", tgw2.port, "dc2"),
        ],
        role="mesh",
    )
    return up, tgw2, mesh2


def call(port: int, files, sni: str) -> tuple[list[str], bytes]:
    cert, key, root = files
    with tls_connect(port, sni, cert, key, root) as sock:
        uris = peer_uris(sock)
        sock.sendall(b"hi")
        return uris, read_all(sock)


@pytest.mark.parametrize("form", ["service", "node"])
@pytest_twisted.ensureDeferred
async def test_mesh_site_reaches_another_datacenter_at_its_wan_address(
    federation: Federation, upstreams, form: str
):
    """A dc1 mesh site forwards a dc2 SNI to dc2's mesh gateway at its WAN address (the
    Consul double's registration; the LAN address is closed): the client's session ends
    at dc2's terminating gateway."""
    up, _, mesh2 = await dc2(federation, upstreams, ("web",))
    mesh1 = await federation.start("mesh-dc1", "dc1", from_consul(form, mesh2.port), role="mesh")
    (endpoint,) = mesh1.site.catalog_view().mesh_gateways["dc2"]
    assert (endpoint.address, endpoint.port) == ("127.0.0.1", mesh2.port)

    uris, answer = await in_thread(
        call, mesh1.port, federation.client_files("web"), sni_for("billing", "dc2")
    )
    assert uris == [spiffe("billing", "dc2")]
    assert answer == BODY and up.accepted == 1
    await settle(*federation.gateways)
    assert mesh1.metric("tgw_mesh_connections_total", datacenter="dc2", via="mesh_gateways") == 1


@pytest.mark.parametrize("form", ["service", "node"])
@pytest_twisted.ensureDeferred
async def test_mesh_hop_remote_mode_dials_the_wan_address(
    federation: Federation, upstreams, form: str
):
    """The ``mesh_hop`` strategy (remote mode) dials dc2's mesh gateway at its WAN address."""
    up, tgw2, mesh2 = await dc2(federation, upstreams, ("tgw-dc1",))
    tgw1 = await federation.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            service_in("billing", free_port(), "dc2"),
            *from_consul(form, mesh2.port),
            intentions("billing", ("web", "allow")),
        ],
        extra='[sites.tgw-dc1.mesh_hop]\nmode = "remote"',
    )
    uris, answer = await in_thread(
        call, tgw1.port, federation.client_files("web"), sni_for("billing")
    )
    assert uris == [spiffe("billing", "dc1")]
    assert answer == BODY and up.accepted == 1
    await settle(*federation.gateways)
    (far,) = tgw2.access_records()
    assert far["source"] == spiffe("tgw-dc1", "dc1")


def _gateway(doc: dict, datacenter: str = "dc1") -> tuple[str, int]:
    from gwcore.policy.consul_shapes import build_mesh_gateways

    docs, problems = parse_documents([("t", doc)])
    assert problems == []
    (gateways,) = build_mesh_gateways(docs, datacenter)
    (endpoint,) = gateways.endpoints
    return endpoint.address, endpoint.port


@pytest.mark.parametrize(
    ("service", "node", "expected"),
    [
        # WAN service address and port first
        ({"Address": "10.0.0.1",
          "TaggedAddresses": {"wan": {"Address": "198.51.100.1", "Port": 9}}},
         {"wan": "203.0.113.1"}, ("198.51.100.1", 9)),
        # a WAN service address with port 0 keeps the service port
        ({"TaggedAddresses": {"wan": {"Address": "198.51.100.1", "Port": 0}}}, {},
         ("198.51.100.1", 8443)),
        # then the service address (before the node's WAN address)
        ({"Address": "10.0.0.1"}, {"wan": "203.0.113.1"}, ("10.0.0.1", 8443)),
        # a tagged WAN with an empty address falls through to the node, keeping its port
        ({"TaggedAddresses": {"wan": {"Address": "", "Port": 9}}}, {"wan": "203.0.113.1"},
         ("203.0.113.1", 9)),
        # then the node's WAN address, then the node address
        ({}, {"wan": "203.0.113.1", "lan": "10.9.9.9"}, ("203.0.113.1", 8443)),
        ({}, {"lan": "10.9.9.9"}, ("192.0.2.9", 8443)),
    ],
)  # fmt: skip
def test_best_address_wan_order(service: dict, node: dict, expected: tuple[str, int]):
    """Consul's BestAddress(wan=true) order for another datacenter's gateway; the same
    registration in the site's own datacenter keeps the LAN form (service, then node)."""
    doc = {
        "Node": "mgw",
        "Address": "192.0.2.9",
        "Datacenter": "dc2",
        "TaggedAddresses": node,
        "Service": {"ID": "m", "Service": "mesh-gateway", "Kind": "mesh-gateway", "Port": 8443}
        | service,
    }
    assert _gateway(doc) == expected
    lan = (service.get("Address") or "192.0.2.9", 8443)
    assert _gateway(doc, "dc2") == lan
