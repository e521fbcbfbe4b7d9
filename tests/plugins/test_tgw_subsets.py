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
