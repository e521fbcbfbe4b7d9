"""Routing by SNI on a mesh gateway: own datacenter to Connect endpoints, another to its
mesh gateways, everything else no route with a reason."""

from __future__ import annotations

import pytest

from gwcore.policy.mesh import (
    MESH_GATEWAY_SERVICE,
    NO_ROUTE_REASONS,
    MeshRoute,
    NoRoute,
    route_by_sni,
)
from gwcore.policy.model import CatalogSnapshot, Destination, Endpoint, MeshGateways, ServiceName
from gwcore.policy.routes import RouteTable, merge_mesh_gateways
from gwcore.policy.sni import service_sni

TD = "td.consul"
BILLING = Destination(ServiceName("billing"), "dc1", (Endpoint("10.0.0.5", 8443),))
ROUTES = RouteTable.build([BILLING], "dc1", TD)
GATEWAYS = {"dc2": (Endpoint("192.0.2.2", 8443),)}


def route(sni: str) -> MeshRoute | NoRoute:
    return route_by_sni(sni, "dc1", TD, ROUTES, GATEWAYS)


def test_own_datacenter_goes_to_the_services_connect_endpoints():
    found = route(service_sni(ServiceName("billing"), "dc1", TD))
    assert isinstance(found, MeshRoute)
    assert (found.remote, found.datacenter, found.target) == (False, "dc1", BILLING)


def test_subset_names_of_undefined_subsets_have_no_route():
    """A subset no service-resolver defines has no route (Consul's mesh gateway has no
    cluster for it); defined subsets are tested in tests/plugins/test_mesh_subsets.py."""
    found = route(service_sni(ServiceName("billing"), "dc1", TD, subset="v2"))
    assert isinstance(found, NoRoute) and found.reason == "unknown_subset"


def test_another_datacenter_goes_to_its_mesh_gateways_whatever_the_service():
    found = route(service_sni(ServiceName("anything", "ops"), "dc2", TD))
    assert isinstance(found, MeshRoute) and found.remote
    assert found.service == ServiceName("anything", "ops")
    assert found.target == Destination(MESH_GATEWAY_SERVICE, "dc2", GATEWAYS["dc2"])


@pytest.mark.parametrize(
    ("sni", "reason"),
    [
        ("example.com", "not_a_service_sni"),
        (service_sni(ServiceName("billing"), "dc1", "other.consul"), "not_a_service_sni"),
        (service_sni(ServiceName("ledger"), "dc1", TD), "unknown_service"),
        (service_sni(ServiceName("billing"), "dc9", TD), "unknown_datacenter"),
    ],
)
def test_no_route_has_a_bounded_reason(sni, reason):
    found = route(sni)
    assert isinstance(found, NoRoute) and found.reason == reason
    assert found.reason in NO_ROUTE_REASONS


def test_mesh_gateways_merge_first_source_wins_per_datacenter():
    first = CatalogSnapshot("a", mesh_gateways=(MeshGateways("dc2", (Endpoint("1.1.1.1", 1),)),))
    second = CatalogSnapshot(
        "b",
        mesh_gateways=(
            MeshGateways("dc2", (Endpoint("2.2.2.2", 2),)),
            MeshGateways("dc3", (Endpoint("3.3.3.3", 3),)),
        ),
    )
    merged = merge_mesh_gateways([first, second])
    assert {dc: [str(e) for e in eps] for dc, eps in merged.items()} == {
        "dc2": ["1.1.1.1:1"],
        "dc3": ["3.3.3.3:3"],
    }


# --- WAN federation names (gwcore.policy.wanfed), routed only when the site asks -------

CONSUL = Destination(ServiceName("consul"), "dc1", (Endpoint("10.0.1.1", 8300, node="srv1"),))
ROUTES_WITH_SERVERS = RouteTable.build([BILLING, CONSUL], "dc1", TD)


def test_server_names_are_not_routed_unless_wan_federation_is_on():
    """By default a mesh gateway routes service names only: ``server.dc1.consul`` has
    no route, as a Consul mesh gateway without ``consul-wan-federation`` meta."""
    found = route_by_sni("server.dc1.consul", "dc1", TD, ROUTES_WITH_SERVERS, GATEWAYS)
    assert isinstance(found, NoRoute) and found.reason == "not_a_service_sni"


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("server.dc1.consul", ("consul", "dc1", False)),
        ("srv1.server.dc1.consul", ("consul", "dc1", False)),
        ("server.dc2.consul", ("consul", "dc2", True)),
        ("nosuch.server.dc1.consul", "unknown_server"),
        ("server.dc9.consul", "unknown_datacenter"),
        ("example.com", "not_a_service_sni"),
    ],
)
def test_with_wan_federation_server_names_go_to_servers_or_have_a_reason(sni, expected):
    """With WAN federation on, a server name reaches this datacenter's servers (that
    node's only, when named) or the other datacenter's mesh gateways; an unknown node or
    datacenter, and a name that is neither a service nor a server, have no route."""
    found = route_by_sni(sni, "dc1", TD, ROUTES_WITH_SERVERS, GATEWAYS, wan_federation=True)
    if isinstance(expected, str):
        assert isinstance(found, NoRoute) and found.reason == expected
        return
    assert isinstance(found, MeshRoute)
    assert (found.service.name, found.datacenter, found.remote) == expected
    if sni.startswith("srv1."):
        assert [e.node for e in found.target.endpoints] == ["srv1"]


def test_with_wan_federation_and_no_servers_a_server_name_has_no_route():
    """No ``consul`` instances in the catalog: ``server.dc1.consul`` is refused with a
    reason, never routed to an empty destination."""
    found = route_by_sni("server.dc1.consul", "dc1", TD, ROUTES, GATEWAYS, wan_federation=True)
    assert isinstance(found, NoRoute) and found.reason == "unknown_server"
