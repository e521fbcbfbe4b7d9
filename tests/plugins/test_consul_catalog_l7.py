"""consul_catalog's L7 inputs (issue 22): the protocol from ``/v1/config/service-defaults``,
else ``/v1/config/proxy-defaults``, else tcp, and the ``mesh`` entry's HTTP options from
``/v1/config/mesh`` — every one a blocking watch, so a live edit is seen without a
restart. Every test here runs against the Consul double (gwcore/testing/consul.py), whose
config-entry indexes follow Consul's config_entry.go: one index per kind, moved by any
write or delete of an entry of that kind, never by a write that changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gwcore.net.consul import ConsulClient, ConsulError, ConsulSettings
from gwcore.plugins.consul_catalog import ConsulCatalogSource
from gwcore.testing import FakeSite, site_config
from gwcore.testing.consul import ConsulDouble, wait_deferred
from gwcore.testing.consul_state import CatalogStore, ConfigEntryError, Indexes

CATALOG = "gwcore.plugins.consul_catalog"
FAST = {"wait": "2s", "timeout": "3s", "retry_min": "0.05s", "retry_max": "0.3s", "rate": 50}
PROXY = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
MESH = {
    "Kind": "mesh",
    "HTTP": {"Incoming": {"RequestNormalization": {"MergeSlashes": True}}},
}


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await wait_deferred(reactor, 0.02)
    raise AssertionError("condition not met in time")


def _protocol(published: list[Any]) -> str | None:
    found = [d for d in published[-1].destinations if d.service.name == "billing"]
    return found[0].protocol if found else None


def test_the_double_moves_a_kinds_index_on_every_change_of_that_kind_only():
    """Uses the Consul double's store. Writing proxy-defaults moves config:proxy-defaults
    (not config:service-defaults); rewriting it unchanged moves nothing; deleting it
    moves it again; mesh has its own index."""
    store = CatalogStore("dc1", Indexes())
    store.put_config({"Kind": "service-defaults", "Name": "billing", "Protocol": "http"})
    defaults = store.indexes.get("config:service-defaults")
    first = store.put_config(PROXY)
    assert store.indexes.get("config:proxy-defaults") == first
    assert store.indexes.get("config:service-defaults") == defaults
    assert store.put_config(PROXY) == first and store.indexes.get("config:proxy-defaults") == first
    store.put_config({**PROXY, "Config": {"protocol": "grpc"}})
    second = store.indexes.get("config:proxy-defaults")
    assert second > first
    store.delete_config("proxy-defaults", "global")
    assert store.indexes.get("config:proxy-defaults") > second
    store.put_config(MESH)
    assert store.indexes.get("config:mesh") > second and store.entry("mesh", "mesh") is not None


def test_the_double_names_proxy_defaults_global_and_refuses_other_names_as_consul_does():
    """Uses the Consul double's store. An unnamed proxy-defaults is stored as global; any
    other name is refused with Consul's error text; a mesh entry is always 'mesh'."""
    store = CatalogStore("dc1", Indexes())
    store.put_config({"Kind": "proxy-defaults", "Config": {"protocol": "http"}})
    assert store.entry("proxy-defaults", "global") is not None
    with pytest.raises(ConfigEntryError, match=r'invalid name \("x"\), only "global"'):
        store.put_config({**PROXY, "Name": "x"})
    store.put_config({"Kind": "mesh"})
    assert store.entry("mesh", "mesh") is not None


@pytest_twisted.ensureDeferred
async def test_the_doubles_http_api_answers_a_refused_entry_with_a_500():
    """Uses the Consul double. PUT /v1/config with a proxy-defaults not named global is
    an error answer, as Consul's RPC error is; the listing stays empty."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    client = ConsulClient(reactor, ConsulSettings(address=double.address, wait=1.0, timeout=2.0))
    try:
        with pytest.raises(ConsulError, match="500"):
            await client.put("config", "/v1/config", {**PROXY, "Name": "x"})
        listing = await client.get("config", "/v1/config/proxy-defaults", ())
        assert listing.json() == [] and listing.index >= 1
    finally:
        await client.close()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_protocol_and_mesh_entry_follow_live_edits(tmp_path: Path) -> None:
    """Uses the Consul double. billing starts as tcp with no mesh entry; a proxy-defaults
    write makes it http, a service-defaults write (grpc) wins over it, deleting that
    falls back to proxy-defaults, deleting both gives tcp; a mesh write publishes its
    HTTP options and deleting it withdraws them — each seen through a blocking watch."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    double.register(
        {
            "Node": "ext",
            "Address": "10.0.0.1",
            "Service": {"ID": "billing-1", "Service": "billing", "Port": 443},
        }
    )
    double.link("legacy-gw", "billing")
    section = {"address": double.address, "register": False, **FAST}
    site = FakeSite(site_config(tmp_path, [CATALOG], {CATALOG: section}), tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    try:
        await source.start(published.append)
        assert _protocol(published) == "tcp" and published[-1].mesh_http is None
        double.put_config(PROXY)
        await _until(lambda: _protocol(published) == "http")
        double.put_config({"Kind": "service-defaults", "Name": "billing", "Protocol": "GRPC"})
        await _until(lambda: _protocol(published) == "grpc")
        double.delete_config("service-defaults", "billing")
        await _until(lambda: _protocol(published) == "http")
        double.delete_config("proxy-defaults", "global")
        await _until(lambda: _protocol(published) == "tcp")
        double.put_config(MESH)
        await _until(lambda: published[-1].mesh_http is not None)
        mesh = published[-1].mesh_http
        assert mesh.normalization.merge_slashes and mesh.origin == "consul:config/mesh"
        double.delete_config("mesh", "mesh")
        await _until(lambda: published[-1].mesh_http is None)
        assert source.health().last_error is None
    finally:
        await source.stop()
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_a_bad_mesh_entry_keeps_the_last_good_options_and_is_reported_once(
    tmp_path: Path,
) -> None:
    """Uses the Consul double. A mesh entry with an unknown HeadersWithUnderscoresAction
    (the double, like a lenient store, accepts it) is reported once, naming the key, and
    the options in force stay; routes keep publishing."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    double.link("legacy-gw", "billing")
    double.put_config(MESH)
    section = {"address": double.address, "register": False, **FAST}
    site = FakeSite(site_config(tmp_path, [CATALOG], {CATALOG: section}), tmp_path / "state")
    site.reactor = reactor
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    try:
        await source.start(published.append)
        good = published[-1].mesh_http
        assert good is not None and good.normalization.merge_slashes
        bad = {"Kind": "mesh", "HTTP": {"Incoming": {"RequestNormalization": {}}}}
        bad["HTTP"]["Incoming"]["RequestNormalization"]["HeadersWithUnderscoresAction"] = "X"
        double.put_config(bad)
        await _until(lambda: any("mesh entry kept" in str(e) for e in site.events))
        assert published[-1].mesh_http == good
        errors = [e for e in site.events if "HeadersWithUnderscoresAction" in str(e)]
        assert len(errors) == 1
    finally:
        await source.stop()
        await double.stop()
