"""service-resolver subsets at a terminating site (Consul's envoy suite cases
``case-terminating-gateway-subsets`` and ``deleted-resolver``): one route per subset at
Consul's subset SNI, presenting the service's leaf, reaching only the instances the
subset's ``Filter`` selects; ``OnlyPassing`` drops warning instances; editing or
deleting the resolver adds or removes subset routes live; an unknown subset SNI is
refused like any unknown SNI."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from gwcore.runtime.config_check import check_config
from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    Gateway,
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    sni_for,
    tls_connect,
    write_json,
)

__all__ = ["gateway"]
from tests.harness import gateway


def instance(port: int, version: str, status: str = "passing") -> dict:
    """An external s2 instance on its own made-up node, as Consul's suite registers them."""
    sid = f"s2-{version}"
    return {
        "Node": f"ext-{version}",
        "Address": "127.0.0.1",
        "NodeMeta": {"external-node": "true"},
        "Service": {"ID": sid, "Service": "s2", "Port": port, "Meta": {"version": version}},
        "Checks": [{"CheckID": f"{sid}-tcp", "Status": status, "ServiceID": sid}],
    }


RESOLVER = {
    "Kind": "service-resolver",
    "Name": "s2",
    "DefaultSubset": "v1",
    "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True},
        "v2-any": {"Filter": "Service.Meta.version == v2"},
    },
}


def sni(subset: str = "") -> str:
    return f"{subset}.{sni_for('s2')}" if subset else sni_for("s2")


def call(port: int, name: str, files: tuple[Path, Path, Path]) -> tuple[bytes, list[str]]:
    with tls_connect(port, name, *files) as sock:
        return read_all(sock), peer_uris(sock)


async def refused(port: int, name: str, files: tuple[Path, Path, Path]) -> None:
    with pytest.raises(HandshakeRefusedError):
        await in_thread(call, port, name, files)


async def start(gateway: Gateway, upstreams, v2_status: str = "warning"):
    one, two = upstreams(hello(b"v1 here")), upstreams(hello(b"v2 here"))
    write_json(
        gateway.catalog / "catalog.json",
        [
            gateway_entry("s2"),
            intentions("s2", ("web", "allow")),
            instance(one.port, "v1"),
            instance(two.port, "v2", v2_status),
        ],
    )
    write_json(gateway.catalog / "resolver.json", RESOLVER)
    await gateway.start()
    return one, two, gateway.client_files("web")


@pytest_twisted.ensureDeferred
async def test_subset_routes_reach_the_subsets_instances(gateway: Gateway, upstreams):
    """v1's SNI reaches the v1 instance and presents s2's leaf; the plain name follows
    DefaultSubset v1; v2 (OnlyPassing) refuses while its only instance is warning, as
    Consul marks it unhealthy; v2-any (no OnlyPassing) reaches the warning instance; an
    undefined subset is refused like any unknown SNI; /routes lists the subset routes."""
    one, two, files = await start(gateway, upstreams)
    body, uris = await in_thread(call, gateway.port, sni("v1"), files)
    assert body == b"v1 here"
    assert uris == [f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/s2"]
    for _ in range(3):
        assert (await in_thread(call, gateway.port, sni(), files))[0] == b"v1 here"
    assert (await in_thread(call, gateway.port, sni("v2-any"), files))[0] == b"v2 here"
    assert (await in_thread(call, gateway.port, sni("v2"), files))[0] == b""  # no endpoint
    await refused(gateway.port, sni("v9"), files)
    assert (one.accepted, two.accepted) == (4, 1)
    listed = {r["sni"]: r for r in gateway.site.current()[0].describe()}
    assert set(listed) == {sni(), sni("v1"), sni("v2"), sni("v2-any")}
    assert listed[sni("v1")]["subset"] == "v1" and listed[sni()]["subset"] == ""
    assert [e["port"] for e in listed[sni("v2-any")]["endpoints"]] == [two.port]
    assert listed[sni("v2")]["endpoints"] == []
    skipped = gateway.metric(
        "tgw_catalog_skipped_entries", source="file_catalog", kind="service-resolver"
    )
    assert skipped == 0  # read, not skipped


@pytest_twisted.ensureDeferred
async def test_deleting_and_editing_the_resolver_is_applied_live(gateway: Gateway, upstreams):
    """Consul's deleted-resolver case: removing the resolver removes the subset routes
    (their SNIs are refused) and the plain name reaches every instance again; writing
    it back with a new subset adds that route without a restart."""
    _, _, files = await start(gateway, upstreams, v2_status="passing")
    assert (await in_thread(call, gateway.port, sni("v2"), files))[0] == b"v2 here"
    (gateway.catalog / "resolver.json").unlink()
    await gateway.wait_for(lambda: len(gateway.site.current()[0]) == 1)
    await refused(gateway.port, sni("v1"), files)
    got = {(await in_thread(call, gateway.port, sni(), files))[0] for _ in range(4)}
    assert got == {b"v1 here", b"v2 here"}
    write_json(
        gateway.catalog / "resolver.json",
        {
            "Kind": "service-resolver",
            "Name": "s2",
            "Subsets": {"new": {"Filter": 'Node.Node == "ext-v2"'}},
        },
    )
    await gateway.wait_for(lambda: len(gateway.site.current()[0]) == 2)
    assert (await in_thread(call, gateway.port, sni("new"), files))[0] == b"v2 here"


@pytest_twisted.ensureDeferred
async def test_resolver_settings_apply_and_are_reported(gateway: Gateway, upstreams):
    """ConnectTimeout and LoadBalancer (ring_hash on the source identity) apply to the
    service and its subsets: one client always reaches the same instance; /routes
    reports the resolver's settings (Failover is the caller's, only reported)."""
    resolver = {
        **RESOLVER,
        "ConnectTimeout": "750ms",
        "LoadBalancer": {"Policy": "ring_hash"},
        "Failover": {"*": {"Datacenters": ["dc2"]}},
        "DefaultSubset": "",
    }
    one, two, files = await start(gateway, upstreams, v2_status="passing")
    write_json(gateway.catalog / "resolver.json", resolver)
    await gateway.wait_for(
        lambda: all(d.lb_policy == "ring_hash" for _, d in gateway.site.current()[0])
    )
    got = {(await in_thread(call, gateway.port, sni(), files))[0] for _ in range(6)}
    assert len(got) == 1  # the same identity hashes to the same instance
    listed = {r["sni"]: r for r in gateway.site.current()[0].describe()}
    assert listed[sni("v1")]["lb_policy"] == "ring_hash"
    assert listed[sni()]["resolver"]["Failover"] == {"*": {"Datacenters": ["dc2"]}}
    routes = dict(gateway.site.current()[0])
    assert routes[sni()].connect_timeout == routes[sni("v2")].connect_timeout == 0.75
    assert one.accepted + two.accepted == 6


def test_check_config_reports_resolver_problems_with_file_and_key(tmp_path: Path):
    """`tgw check-config`: a bad service-resolver is a problem naming the file and key."""
    gw = Gateway(tmp_path)
    write_json(gw.catalog / "gateway.json", gateway_entry("s2"))
    bad = {**RESOLVER, "LoadBalancer": {"Policy": "fastest"}}
    write_json(gw.catalog / "resolver.json", bad)
    (tmp_path / "ca").mkdir()
    checked = check_config(gw.write_config())
    texts = [str(p) for p in checked.problems]
    assert any(
        "resolver.json: LoadBalancer.Policy: Bad LoadBalancer policy: 'fastest'" in t for t in texts
    ), texts
