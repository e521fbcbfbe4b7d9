"""Mesh gateway mode ``none`` (Consul's default) beside ``local``/``remote``, per site and
per destination: a destination of another datacenter in mode ``none`` is dialled
directly, at its WAN address; in ``local``/``remote`` mode it goes through mesh gateways
and fails closed without one. End to end on 127.0.0.1."""

from __future__ import annotations

import pytest_twisted

from gwcore.plugins.mesh_hop import read_settings
from gwcore.testing import site_config
from tests.harness import gateway_entry, hello, in_thread, intentions, request, sni_for
from tests.multidc import Federation, federation, settle

__all__ = ["federation"]

BODY = b"straight to dc2\n" * 1000


def in_dc2_at_wan(service: str, port: int) -> dict:
    """An instance registered in dc2 (as ``?dc=dc2`` shows it) whose LAN node address
    has no listener; its node's WAN address is 127.0.0.1."""
    return {
        "Node": f"{service}-node",
        "Address": "127.0.0.2",
        "Datacenter": "dc2",
        "TaggedAddresses": {"lan": "127.0.0.2", "wan": "127.0.0.1"},
        "Service": {"ID": service, "Service": service, "Port": port},
        "Checks": [{"CheckID": f"{service}-tcp", "Status": "passing", "ServiceID": service}],
    }


@pytest_twisted.ensureDeferred
async def test_default_mode_none_dials_directly_and_a_destination_can_ask_for_a_gateway(
    federation: Federation, upstreams
):
    """No ``mode`` (Consul's default ``none``): ``billing`` in dc2 is dialled directly at
    its WAN address, with no mesh gateway known. ``ledger``, set to ``local`` in
    ``[mesh_hop.destinations]``, goes through the hop, which finds no mesh gateway in dc1
    and refuses without dialling ``ledger``'s (reachable) instance."""
    billing, ledger = upstreams(hello(BODY)), upstreams(hello(BODY))
    tgw1 = await federation.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", "ledger", name="tgw-dc1"),
            in_dc2_at_wan("billing", billing.port),
            in_dc2_at_wan("ledger", ledger.port),
            intentions("billing", ("web", "allow")),
            intentions("ledger", ("web", "allow")),
        ],
        extra='[sites.tgw-dc1.mesh_hop.destinations]\nledger = "local"',
    )
    files = federation.client_files("web")
    assert await in_thread(request, tgw1.port, sni_for("billing"), files) == BODY
    assert billing.accepted == 1
    assert await in_thread(request, tgw1.port, sni_for("ledger"), files) == b""
    assert ledger.accepted == 0
    await settle(tgw1)
    labels = {"datacenter": "dc2", "reason": "no_mesh_gateway"}
    assert tgw1.metric("tgw_mesh_hop_failures_total", **labels) == 1


@pytest_twisted.ensureDeferred
async def test_destination_mode_none_overrides_a_site_in_remote_mode(
    federation: Federation, upstreams
):
    """Site ``mode = "remote"`` with no dc2 mesh gateway; ``billing = "none"`` in
    ``[mesh_hop.destinations]`` is still reached directly."""
    billing = upstreams(hello(BODY))
    tgw1 = await federation.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            in_dc2_at_wan("billing", billing.port),
            intentions("billing", ("web", "allow")),
        ],
        extra='[sites.tgw-dc1.mesh_hop]\nmode = "remote"\n'
        '[sites.tgw-dc1.mesh_hop.destinations]\nbilling = "none"',
    )
    files = federation.client_files("web")
    assert await in_thread(request, tgw1.port, sni_for("billing"), files) == BODY
    assert (
        tgw1.metric("tgw_mesh_hop_failures_total", datacenter="dc2", reason="no_mesh_gateway") == 0
    )


def test_per_destination_modes_are_checked(tmp_path):
    """A per-destination mode must be one of none/local/remote (named by file and key);
    a mesh site refuses the table, as it refuses ``mode``."""
    site = site_config(
        tmp_path, sections={"mesh_hop": {"destinations": {"billing": "sideways", "ok": "none"}}}
    )
    settings, problems = read_settings(site)
    assert [p.key for p in problems] == ["sites.main.mesh_hop.destinations.billing"]
    assert "none, local, remote" in problems[0].message
    assert dict(settings.destinations) == {"ok": "none"} and settings.mode == "none"
    mesh = site_config(tmp_path, role="mesh", sections={"mesh_hop": {"destinations": {}}})
    assert [p.key for p in read_settings(mesh)[1]] == ["sites.main.mesh_hop.destinations"]
