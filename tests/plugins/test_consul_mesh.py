"""Mesh sites fed by Consul (``consul_catalog`` on ``role = "mesh"``, ``plugins/consul_mesh.py``),
in a two-datacenter chain on 127.0.0.1 with real TLS:

client (dc1) -> mesh site of dc1 (Consul dc1) -> mesh site of dc2 (Consul dc2)
-> terminating site of dc2 -> the real upstream.

Both mesh sites read the Consul double (one double per datacenter, joined with
:func:`~gwcore.testing.consul_mesh.federate` so ``?dc=`` crosses over as a WAN-federated
agent's does): dc2's mesh site learns ``billing`` from ``/v1/health/connect/billing``
(the terminating gateway linking it), dc1's learns dc2's mesh gateways from
``/v1/catalog/datacenters`` and ``/v1/health/service/mesh-gateway?dc=dc2``, at their WAN
address. The dc2 terminating site reads files, as before."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.testing.consul import ConsulDouble
from gwcore.testing.consul_mesh import federate
from tests.harness import (
    HandshakeRefusedError,
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    registration,
    sleep,
    sni_for,
    tls_connect,
)
from tests.multidc import (
    DCGateway,
    Federation,
    federation,
    gateway_instance,
    service_in,
    settle,
    spiffe,
)

__all__ = ["federation"]

BODY = b"ledger of dc2 via Consul\n" * 1500


def call(port: int, files, sni: str) -> tuple[list[str], bytes]:
    cert, key, root = files
    with tls_connect(port, sni, cert, key, root) as sock:
        uris = peer_uris(sock)
        sock.sendall(b"hi")
        return uris, read_all(sock)


def refused(port: int, files, sni: str) -> bool:
    """Whether the gateway closed the connection without a handshake."""
    try:
        call(port, files, sni)
    except (OSError, HandshakeRefusedError):
        return True
    return False


def tgw_node(port: int) -> dict:
    """dc2's terminating gateway as its agent registers it, with a passing check."""
    return {
        "Node": "tgw-dc2-node",
        "Address": "127.0.0.1",
        "Service": {"ID": "tgw-dc2", "Service": "tgw-dc2", "Kind": "terminating-gateway",
                    "Port": port},
        "Checks": [{"CheckID": "tgw-tcp", "Name": "tcp", "Status": "passing",
                    "ServiceID": "tgw-dc2"}],
    }  # fmt: skip


def mgw_node(port: int, node: str = "mgw-dc2") -> dict:
    """dc2's mesh gateway: LAN address closed, WAN address served (Consul's BestAddress)."""
    return {
        "Node": node,
        "Address": "127.0.0.1",
        "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
        "Service": {
            "ID": node, "Service": "mesh-gateway", "Kind": "mesh-gateway", "Port": free_port(),
            "TaggedAddresses": {"wan": {"Address": "127.0.0.1", "Port": port}},
        },
        "Checks": [{"CheckID": f"{node}-tcp", "Name": "tcp", "Status": "passing",
                    "ServiceID": node}],
    }  # fmt: skip


def consul_section(
    key: str, double: ConsulDouble, register: bool = False, watches: int = 128
) -> str:
    return (
        f'[sites.{key}.consul_catalog]\naddress = "{double.address}"\n'
        f"register = {str(register).lower()}\nhealth_watches = {watches}\n"
        'datacenters_interval = "0.2s"\nretry_min = "0.05s"\nretry_max = "0.2s"\n'
    )


async def eventually(check: Any, what: str, timeout: float = 8.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Chain:
    """Two Consul datacenters, their doubles and gateways (module docstring)."""

    def __init__(self, fed: Federation, upstreams: Any) -> None:
        self.fed = fed
        self.upstreams = upstreams
        self.consul1 = ConsulDouble(reactor, datacenter="dc1", jitter=False)
        self.consul2 = ConsulDouble(reactor, datacenter="dc2", jitter=False)
        self.up: Any = None
        self.tgw2: DCGateway | None = None
        self.mesh1: DCGateway | None = None
        self.mesh2: DCGateway | None = None

    async def start(
        self,
        *,
        register_mgw: bool = True,
        mesh1_extra: str = "",
        self_register: bool = False,
        watches: int = 128,
    ) -> Chain:
        await self.consul1.start()
        await self.consul2.start()
        federate(self.consul1, self.consul2)
        self.up = self.upstreams(hello(BODY))
        self.tgw2 = await self.fed.start(
            "tgw-dc2",
            "dc2",
            [
                gateway_entry("billing", name="tgw-dc2"),
                service_in("billing", self.up.port, "dc2"),
                intentions("billing", ("web", "allow"), ("tgw-dc1", "allow")),
            ],
        )
        self.consul2.register(registration("billing", self.up.port))
        self.consul2.register(tgw_node(self.tgw2.port))
        self.consul2.link("tgw-dc2", "billing")
        self.mesh2 = await self.fed.start(
            "mesh-dc2", "dc2", [], role="mesh", plugins=["consul_catalog"], name="mesh-gateway",
            extra=consul_section("mesh-dc2", self.consul2, self_register, watches),
        )  # fmt: skip
        if register_mgw:
            self.consul2.register(mgw_node(self.mesh2.port))
        self.mesh1 = await self.fed.start(
            "mesh-dc1", "dc1", [], role="mesh", plugins=["consul_catalog"],
            extra=consul_section("mesh-dc1", self.consul1) + mesh1_extra,
        )  # fmt: skip
        return self

    def files(self) -> Any:
        return self.fed.client_files("web")

    async def call_dc2(self) -> tuple[list[str], bytes]:
        assert self.mesh1 is not None
        return await in_thread(call, self.mesh1.port, self.files(), sni_for("billing", "dc2"))

    async def refused_dc2(self) -> bool:
        assert self.mesh1 is not None
        return await in_thread(refused, self.mesh1.port, self.files(), sni_for("billing", "dc2"))

    def dc2_gateways(self) -> list[tuple[str, int]]:
        assert self.mesh1 is not None
        view = self.mesh1.site.catalog_view().mesh_gateways
        return [(e.address, e.port) for e in view.get("dc2", ())]

    def local_routes(self, gateway: DCGateway) -> dict[str, list[str]]:
        return {sni: [str(e) for e in d.endpoints] for sni, d in gateway.site.router.routes}

    async def stop(self) -> None:
        await self.consul1.stop()
        await self.consul2.stop()


@pytest.fixture
def chain(federation: Federation, upstreams: Any):
    made = Chain(federation, upstreams)
    yield made
    pytest_twisted.blockon(Deferred.fromCoroutine(made.stop()))


@pytest_twisted.ensureDeferred
async def test_two_datacenter_chain_through_consul_fed_mesh_sites(chain: Chain):
    """A dc1 client reaches dc2's upstream through two Consul-fed mesh sites: dc1's dials
    dc2's mesh gateway at its WAN address (from ``?dc=dc2``), dc2's routes the service
    name to the terminating gateway that links it (``/v1/health/connect/billing``), and
    the client's session ends at dc2's terminating gateway, untouched in between."""
    await chain.start()
    assert chain.mesh2 is not None and chain.tgw2 is not None and chain.mesh1 is not None
    assert chain.dc2_gateways() == [("127.0.0.1", chain.mesh2.port)]
    routes = chain.local_routes(chain.mesh2)
    assert [sni for sni in routes if sni.startswith("billing.")] == [sni_for("billing", "dc2")]
    uris, answer = await chain.call_dc2()
    assert uris == [spiffe("billing", "dc2")]
    assert answer == BODY and chain.up.accepted == 1
    await settle(chain.mesh1, chain.mesh2, chain.tgw2)
    assert chain.mesh1.metric("tgw_mesh_connections_total", datacenter="dc2", via="mesh_gateways")
    assert chain.mesh2.metric("tgw_mesh_connections_total", datacenter="dc2", via="local") == 1
    (record,) = chain.tgw2.access_records()
    assert record["source"] == spiffe("web", "dc1")
    paths = {r.path for r in chain.consul1.requests}
    assert {"/v1/catalog/datacenters", "/v1/health/service/mesh-gateway"} <= paths
    assert any(r.args.get("dc") == ["dc2"] for r in chain.consul1.requests)
    assert "/v1/health/connect/billing" in {r.path for r in chain.consul2.requests}
    described = chain.mesh1.site.describe_routes()
    assert described["mesh_gateways"]["dc2"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("watches", [128, 0], ids=["watched", "detectors"])
async def test_live_changes_without_restart(chain: Chain, watches: int):
    """Consul changes reach both mesh sites live: dc2's mesh gateway registered after
    start is dialled; unlinking the service removes dc2's route (the connection is
    refused, counted as unknown_service) and linking it again restores it; removing
    dc2's mesh gateway leaves dc1 without a route to dc2 (unknown_datacenter) until a
    new one is registered. With ``health_watches = 0`` dc2's mesh site sees the same
    through the change detectors alone."""
    await chain.start(register_mgw=False, watches=watches)
    assert chain.mesh1 is not None and chain.mesh2 is not None
    assert chain.dc2_gateways() == []
    assert await chain.refused_dc2()
    assert chain.mesh1.metric("tgw_mesh_no_route_total", reason="unknown_datacenter") == 1

    chain.consul2.register(mgw_node(chain.mesh2.port))  # a gateway added
    await eventually(lambda: chain.dc2_gateways(), "dc2's mesh gateway")
    assert (await chain.call_dc2())[1] == BODY

    chain.consul2.link("tgw-dc2")  # billing unlinked
    sni = sni_for("billing", "dc2")
    await eventually(lambda: sni not in chain.local_routes(chain.mesh2), "the route to go")
    assert await chain.refused_dc2()
    await eventually(
        lambda: chain.mesh2.metric("tgw_mesh_no_route_total", reason="unknown_service") == 1,
        "the refusal to be counted",
    )
    chain.consul2.link("tgw-dc2", "billing")
    await eventually(lambda: sni in chain.local_routes(chain.mesh2), "the route to return")
    assert (await chain.call_dc2())[1] == BODY

    chain.consul2.deregister("mgw-dc2")  # the gateway removed
    await eventually(lambda: not chain.dc2_gateways(), "dc2's gateway to go")
    assert await chain.refused_dc2()
    chain.consul2.register(mgw_node(chain.mesh2.port, node="mgw-dc2-b"))
    await eventually(lambda: chain.dc2_gateways(), "the new gateway")
    assert (await chain.call_dc2())[1] == BODY
    assert chain.up.accepted == 3


@pytest_twisted.ensureDeferred
async def test_consul_failure_keeps_the_last_good_state(chain: Chain):
    """When Consul fails (500s) or answers garbage, both mesh sites keep their last good
    routes and gateways, count the errors and say so in ``/ready``; they recover."""
    await chain.start()
    assert chain.mesh1 is not None and chain.mesh2 is not None
    errors = "tgw_catalog_errors_total"
    chain.consul2.fail(500)
    chain.consul1.fail(200, prefix="/v1/catalog/datacenters")  # 200 with a body not JSON
    chain.consul2.register(mgw_node(chain.mesh2.port, node="mgw-dc2-b"))  # wakes the watches
    await eventually(
        lambda: (
            chain.mesh1.metric(errors, source="consul_catalog") > 0
            and chain.mesh2.metric(errors, source="consul_catalog") > 0
        ),
        "the errors to be counted",
    )
    for gateway in (chain.mesh1, chain.mesh2):
        ready = gateway.site.readiness()
        assert ready["ready"]
        assert ready["catalog_sources"]["consul_catalog"]["last_error"]
    assert chain.dc2_gateways() == [("127.0.0.1", chain.mesh2.port)]
    assert (await chain.call_dc2()) == ([spiffe("billing", "dc2")], BODY)
    chain.consul1.clear()
    chain.consul2.clear()
    await eventually(
        lambda: (
            len(chain.dc2_gateways()) == 2
            and not chain.mesh1.site.readiness()["catalog_sources"]["consul_catalog"]["last_error"]
        ),
        "recovery",
    )


@pytest_twisted.ensureDeferred
async def test_wan_federation_reads_the_federation_states(chain: Chain):
    """With ``wan_federation = true`` dc1's mesh site also reads
    ``/v1/internal/federation-states/mesh-gateways`` (as Consul's mesh gateway does with
    the ``consul-wan-federation`` meta): while dc2 answers no ``?dc=dc2`` query for its
    mesh gateways, the gateways its federation state lists are used, and the chain works."""
    chain.consul2.fail(500, prefix="/v1/health/service/mesh-gateway")
    await chain.start(mesh1_extra="[sites.mesh-dc1.mesh_hop]\nwan_federation = true\n")
    assert chain.mesh1 is not None and chain.mesh2 is not None
    # The site started when the ?dc=dc2 query failed; the federation state follows.
    await eventually(lambda: chain.dc2_gateways(), "dc2's gateways from its federation state")
    assert chain.dc2_gateways() == [("127.0.0.1", chain.mesh2.port)]
    assert "/v1/internal/federation-states/mesh-gateways" in {
        r.path for r in chain.consul1.requests
    }
    assert chain.mesh1.site.readiness()["catalog_sources"]["consul_catalog"]["last_error"]
    assert (await chain.call_dc2()) == ([spiffe("billing", "dc2")], BODY)


@pytest_twisted.ensureDeferred
async def test_resolver_subsets_from_consul_live(chain: Chain):
    """A ``service-resolver`` written in dc2's Consul gives dc2's mesh site the subset
    routes (each subset's Filter evaluated on the Connect endpoint's own catalog entry,
    here the terminating gateway's); deleting the entry removes them, without restart."""
    await chain.start()
    assert chain.mesh2 is not None and chain.tgw2 is not None
    sni = sni_for("billing", "dc2")
    chain.consul2.put_config(
        {"Kind": "service-resolver", "Name": "billing",
         "Subsets": {"gw": {"Filter": 'Service.Kind == "terminating-gateway"'},
                     "v9": {"Filter": "Service.Meta.version == v9"}}}
    )  # fmt: skip
    subsets = lambda: chain.mesh2.site.describe_routes()["subsets"].get(sni)  # noqa: E731
    await eventually(lambda: subsets() is not None, "the subsets")
    assert subsets() == {"gw": [f"127.0.0.1:{chain.tgw2.port}"], "v9": []}
    chain.consul2.delete_config("service-resolver", "billing")
    await eventually(lambda: subsets() is None, "the subsets to go")


@pytest_twisted.ensureDeferred
async def test_a_consul_fed_mesh_site_registers_as_a_mesh_gateway(chain: Chain):
    """With ``register = true`` dc2's mesh site (``name = "mesh-gateway"``, Consul's usual
    name) registers itself with its agent as a ``Kind: "mesh-gateway"`` service (its
    listener, a TCP check); dc1's mesh site finds it through ``?dc=dc2`` and the chain
    works with no other registration."""
    await chain.start(register_mgw=False, self_register=True)
    assert chain.mesh2 is not None
    await eventually(lambda: chain.consul2.agent_services, "the registration")
    (body,) = chain.consul2.agent_services.values()
    assert (body["Kind"], body["Name"]) == ("mesh-gateway", "mesh-gateway")
    assert body["Port"] == chain.mesh2.port
    await eventually(lambda: chain.dc2_gateways(), "dc1 to learn the registered gateway")
    assert chain.dc2_gateways() == [("127.0.0.1", chain.mesh2.port)]
    assert (await chain.call_dc2()) == ([spiffe("billing", "dc2")], BODY)


def test_mesh_keys_are_checked(tmp_path):
    """``mesh_gateway_service`` and ``datacenters_interval`` are read on mesh sites and
    refused, naming the key, on terminating sites."""
    from gwcore.plugins.consul_catalog import read_settings
    from gwcore.testing import site_config

    section = {"consul_catalog": {"mesh_gateway_service": "mgw", "datacenters_interval": "5s"}}
    mesh = site_config(tmp_path, ["consul_catalog"], section, role="mesh")
    settings, problems = read_settings(mesh, "consul_catalog")
    assert problems == [] and settings.mesh_gateway_service == "mgw"
    assert settings.datacenters_interval == 5.0
    terminating = site_config(tmp_path, ["consul_catalog"], section)
    _, problems = read_settings(terminating, "consul_catalog")
    keys = sorted(p.key.rpartition(".")[2] for p in problems)
    assert keys == ["datacenters_interval", "mesh_gateway_service"], problems


@pytest_twisted.ensureDeferred
async def test_terminating_hop_through_consul_fed_mesh_sites(chain: Chain):
    """The dc1 hop of the chain may be a terminating site: with ``mesh_hop`` mode local it
    authorizes the client, then opens its own mTLS session to dc2's ``billing`` through
    dc1's Consul-fed mesh site, which forwards it to dc2's (found through ``?dc=dc2``);
    dc2's terminating gateway sees the dc1 gateway's identity and the upstream answers."""
    await chain.start()
    assert chain.mesh1 is not None and chain.tgw2 is not None and chain.mesh2 is not None
    tgw1 = await chain.fed.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            service_in("billing", free_port(), "dc2"),  # billing lives in dc2
            gateway_instance("mesh-gateway", "mesh-gateway", chain.mesh1.port, "dc1"),
            intentions("billing", ("web", "allow")),
        ],
        extra='[sites.tgw-dc1.mesh_hop]\nmode = "local"',
    )
    uris, answer = await in_thread(call, tgw1.port, chain.files(), sni_for("billing"))
    assert uris == [spiffe("billing", "dc1")]
    assert answer == BODY and chain.up.accepted == 1
    await settle(tgw1, chain.mesh1, chain.mesh2, chain.tgw2)
    assert chain.mesh1.metric("tgw_mesh_connections_total", datacenter="dc2", via="mesh_gateways")
    (record,) = chain.tgw2.access_records()
    assert record["source"] == spiffe("tgw-dc1", "dc1")


@pytest_twisted.ensureDeferred
async def test_failed_reads_are_retried_without_a_catalog_change(chain: Chain):
    """With every service on the change detectors (``health_watches = 0``), Connect
    endpoints whose first reads failed are read again with back-off, so the routes come
    without waiting for a change in Consul."""
    chain.consul2.fail(500, prefix="/v1/health/connect/", count=4)
    await chain.start(watches=0, register_mgw=False)  # nothing moves in dc2 from now on
    assert chain.mesh2 is not None
    sni = sni_for("billing", "dc2")
    await eventually(lambda: sni in chain.local_routes(chain.mesh2), "the route")
    chain.consul2.register(mgw_node(chain.mesh2.port))
    await eventually(lambda: chain.dc2_gateways(), "dc2's mesh gateway")
    assert (await chain.call_dc2())[1] == BODY
    failures = chain.mesh2.metric(
        "tgw_consul_errors_total", plugin="consul_catalog", endpoint="health-service",
        kind="http_500",
    )  # fmt: skip
    assert failures >= 1


def test_a_403_for_another_datacenters_gateways_names_the_permission(tmp_path):
    """A refused ``mesh-gateways:<dc>`` query is logged once, naming the permission its
    token needs in that datacenter (looked up by the endpoint's prefix)."""
    from twisted.logger import formatEvent

    from gwcore.net.consul import ConsulError, ConsulFreshness
    from gwcore.testing import FakeSite, site_config

    site = FakeSite(site_config(tmp_path, ["consul_catalog"], role="mesh"), tmp_path / "state")
    freshness = ConsulFreshness(site, "consul_catalog")
    for _ in range(3):
        freshness.failed(ConsulError("mesh-gateways:dc2", "acl_denied", "HTTP 403", 403))
    lines = [
        formatEvent(e)
        for e in site.events
        if "403" in formatEvent(e) or "refused" in formatEvent(e)
    ]
    assert len(lines) == 1, lines
    assert "the token needs service:read and node:read on the mesh gateways" in lines[0]


@pytest_twisted.ensureDeferred
async def test_protocols_resolve_through_proxy_defaults(chain: Chain):
    """Uses the shipped Consul double. dc2's mesh site resolves a service's protocol as
    Consul does: its ``service-defaults`` ``Protocol``, else the partition's
    ``proxy-defaults`` ``Config.protocol``, else tcp — a ``service-defaults`` entry
    without ``Protocol`` has no say (the mesh site once read only ``service-defaults``
    and gave such a service an empty protocol)."""
    await chain.start()
    assert chain.mesh2 is not None
    sni = sni_for("billing", "dc2")
    protocol = lambda: dict(chain.mesh2.site.router.routes)[sni].protocol  # noqa: E731
    assert protocol() == "tcp"
    chain.consul2.put_config({"Kind": "service-defaults", "Name": "billing"})
    chain.consul2.put_config(
        {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
    )
    await eventually(lambda: protocol() == "http", "the proxy-defaults protocol")
    chain.consul2.put_config({"Kind": "service-defaults", "Name": "billing", "Protocol": "grpc"})
    await eventually(lambda: protocol() == "grpc", "the service-defaults protocol")
