"""file_catalog's L7 inputs (issue 22): a linked service's protocol from service-defaults,
else proxy-defaults, else tcp, and the ``mesh`` entry's HTTP options as the snapshot's
``mesh_http`` — both picked up live, a bad mesh file keeping its last good content."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gwcore.policy.http_facts import MeshHttp
from gwcore.policy.routes import merge_mesh_http
from tests.plugins.test_file_catalog import (
    GATEWAY,
    INTERVAL,
    FakeSite,
    Running,
    registration,
    site_config,
    write,
)

PROXY = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
MESH = {
    "Kind": "mesh",
    "HTTP": {
        "SanitizeXForwardedClientCert": True,
        "Incoming": {"RequestNormalization": {"MergeSlashes": True}},
    },
}


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    directory = tmp_path / "catalog"
    directory.mkdir()
    write(directory / "gateway.json", GATEWAY)
    write(directory / "billing.json", registration("billing", 18080))
    return directory


@pytest.fixture
def running(tmp_path: Path, catalog: Path) -> Iterator[Running]:
    config = site_config(tmp_path, {"paths": ["catalog"], "poll_interval": f"{INTERVAL}s"})
    r = Running(FakeSite("main", config))
    yield r
    r.source.stop()


def _protocol(running: Running) -> str:
    (billing,) = running.last.destinations
    return billing.protocol


def test_proxy_defaults_sets_the_protocol_and_an_edit_applies_on_the_next_poll(
    running: Running, catalog: Path
):
    """Without entries billing is tcp; a proxy-defaults file makes it http; editing the
    file to grpc republishes (the site rebuilds its routes: new connections use it); a
    service-defaults entry then wins over proxy-defaults; removing both gives tcp."""
    assert _protocol(running) == "tcp"
    write(catalog / "proxy.json", PROXY)
    running.tick()
    assert _protocol(running) == "http"
    write(catalog / "proxy.json", {**PROXY, "Config": {"Protocol": "GRPC"}})
    running.tick()
    assert _protocol(running) == "grpc"
    write(catalog / "defaults.json", {"Kind": "service-defaults", "Name": "billing"})
    running.tick()
    assert _protocol(running) == "tcp"  # service-defaults without Protocol: its tcp wins
    (catalog / "defaults.json").unlink()
    (catalog / "proxy.json").unlink()
    running.tick()
    assert _protocol(running) == "tcp"
    assert running.site.errors() == 0


def test_the_mesh_entry_becomes_the_snapshots_mesh_http(running: Running, catalog: Path):
    """No mesh file: the snapshot says nothing (None). A mesh file: its options, with
    the file (relative to the config) as origin. Deleting it: None again."""
    assert running.last.mesh_http is None
    write(catalog / "mesh.json", MESH)
    running.tick()
    mesh = running.last.mesh_http
    assert mesh is not None and mesh.sanitize_x_forwarded_client_cert
    assert mesh.normalization.merge_slashes and mesh.origin == "catalog/mesh.json"
    (catalog / "mesh.json").unlink()
    running.tick()
    assert running.last.mesh_http is None


def test_a_bad_mesh_file_is_reported_by_file_and_key_and_its_last_good_content_stays(
    running: Running, catalog: Path
):
    """An unknown PathWithEscapedSlashesAction: one error naming the file and the key,
    counted; the previous options stay in force; fixing the file applies it."""
    write(catalog / "mesh.json", MESH)
    running.tick()
    good = running.last.mesh_http
    published = len(running.snapshots)
    bad = {"Kind": "mesh", "HTTP": {"Incoming": {"RequestNormalization": {}}}}
    bad["HTTP"]["Incoming"]["RequestNormalization"]["PathWithEscapedSlashesAction"] = "DROP"
    write(catalog / "mesh.json", bad)
    running.tick()
    assert len(running.snapshots) == published and running.last.mesh_http == good
    (line,) = running.site.error_lines()
    assert line["problem"].startswith("catalog/mesh.json: ")
    assert "HTTP.Incoming.RequestNormalization.PathWithEscapedSlashesAction" in line["problem"]
    assert running.site.errors() == 1
    write(catalog / "mesh.json", {"Kind": "mesh"})
    running.tick()
    assert running.last.mesh_http == MeshHttp(origin="catalog/mesh.json")


def test_the_sites_view_takes_the_first_source_in_stack_order_that_has_a_mesh_entry(
    running: Running, catalog: Path
):
    """merge_mesh_http: a source without a mesh entry says nothing; the first source
    (stack order) with one decides; none at all gives Consul's defaults."""
    from dataclasses import replace

    from gwcore.policy.http_facts import DEFAULT_MESH_HTTP

    silent = running.last
    write(catalog / "mesh.json", MESH)
    running.tick()
    first = running.last
    second = replace(first, source="other", mesh_http=MeshHttp(origin="other"))
    assert merge_mesh_http([silent, first, second]) == first.mesh_http
    assert merge_mesh_http([second, first]) == MeshHttp(origin="other")
    assert merge_mesh_http([silent]) == DEFAULT_MESH_HTTP
