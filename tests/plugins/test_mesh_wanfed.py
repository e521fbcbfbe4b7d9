"""WAN federation through a mesh site: Consul servers' names (``server.<dc>.consul``,
``<node>.server.<dc>.consul``) routed as Consul's mesh gateways route them
(agent/xds/listeners.go, clusters.go: ServerSNIFn), end to end on 127.0.0.1."""

from __future__ import annotations

import pytest
import pytest_twisted

from gwcore.plugins.mesh_hop import read_settings
from gwcore.policy.wanfed import ServerName, parse_server_sni
from gwcore.testing import TRUST_DOMAIN, site_config
from tests.harness import hello, in_thread
from tests.multidc import Federation, federation, gateway_instance, settle
from tests.net.test_passthrough import raw_exchange
from tests.policy.test_clienthello import openssl_hello

__all__ = ["federation"]


def server(node: str, port: int) -> dict:
    """A Consul server as the catalog lists it: service ``consul`` at its RPC port."""
    return {
        "Node": node,
        "Address": "127.0.0.1",
        "Service": {"ID": "consul", "Service": "consul", "Port": port},
    }


async def ask(mesh, name: str) -> bytes:
    return await in_thread(raw_exchange, mesh.port, openssl_hello(name), True)


@pytest_twisted.ensureDeferred
async def test_server_names_reach_servers_locally_and_through_remote_gateways(
    federation: Federation, upstreams
):
    """With wan_federation: a node's name reaches that server, ``server.dc1.consul`` any
    server of dc1, an unknown node nothing; dc2's names (with or without a node) go to
    dc2's mesh gateway. ``consul`` as a service SNI never reaches the servers."""
    one, two = upstreams(hello(b"srv-a")), upstreams(hello(b"srv-b"))
    far = upstreams(hello(b"dc2 gateway"))
    mesh = await federation.start(
        "mesh-dc1",
        "dc1",
        [
            server("srv-a", one.port),
            server("srv-b", two.port),
            gateway_instance("mesh-gateway", "mesh-gateway", far.port, "dc2"),
        ],
        role="mesh",
        extra="[sites.mesh-dc1.mesh_hop]\nwan_federation = true",
    )
    assert await ask(mesh, "srv-b.server.dc1.consul") == b"srv-b"
    assert await ask(mesh, "srv-a.server.dc1.consul") == b"srv-a"
    assert await ask(mesh, "x.srv-a.server.dc1.consul") == b"srv-a"
    assert await ask(mesh, "server.dc1.consul") in (b"srv-a", b"srv-b")
    assert await ask(mesh, "srv-z.server.dc1.consul") == b""
    assert await ask(mesh, "server.dc2.consul") == b"dc2 gateway"
    assert await ask(mesh, "srv-q.server.dc2.consul") == b"dc2 gateway"
    assert await ask(mesh, "server.dc9.consul") == b""
    assert await ask(mesh, f"consul.default.dc1.internal.{TRUST_DOMAIN}") == b""
    await settle(mesh)
    assert mesh.metric("tgw_mesh_no_route_total", reason="unknown_server") == 1
    assert mesh.metric("tgw_mesh_no_route_total", reason="unknown_datacenter") == 1
    assert mesh.metric("tgw_mesh_no_route_total", reason="unknown_service") == 1
    assert mesh.metric("tgw_mesh_connections_total", datacenter="dc2", via="mesh_gateways") == 2
    assert one.accepted + two.accepted == 4 and far.accepted == 2


@pytest_twisted.ensureDeferred
async def test_without_wan_federation_server_names_are_not_routed(
    federation: Federation, upstreams
):
    """Off by default (Consul needs the consul-wan-federation meta): server names are
    not service names, and nothing is dialled."""
    one = upstreams(hello(b"srv-a"))
    mesh = await federation.start("mesh-dc1", "dc1", [server("srv-a", one.port)], role="mesh")
    assert await ask(mesh, "srv-a.server.dc1.consul") == b""
    assert await ask(mesh, "server.dc1.consul") == b""
    await settle(mesh)
    assert mesh.metric("tgw_mesh_no_route_total", reason="not_a_service_sni") == 2
    assert one.accepted == 0


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("server.dc1.consul", ServerName("dc1", None)),
        ("n1.server.dc1.consul", ServerName("dc1", "n1")),
        ("a.n1.server.dc2.consul", ServerName("dc2", "n1")),
        ("server.consul", None),
        ("n1.server.dc1.example", None),
        ("n1.client.dc1.consul", None),
        ("..server.dc1.consul", None),
    ],
)
def test_parse_server_sni(sni, expected):
    assert parse_server_sni(sni) == expected


def test_wan_federation_is_a_mesh_site_setting(tmp_path):
    """``wan_federation`` is read on mesh sites and refused on terminating sites."""
    mesh = site_config(tmp_path, role="mesh", sections={"mesh_hop": {"wan_federation": True}})
    settings, problems = read_settings(mesh)
    assert problems == [] and settings.wan_federation is True
    tgw = site_config(tmp_path, sections={"mesh_hop": {"wan_federation": True}})
    assert [p.key for p in read_settings(tgw)[1]] == ["sites.main.mesh_hop.wan_federation"]
