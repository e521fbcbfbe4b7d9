"""file_catalog loads a real config-entry directory (the output of `consul config read`
for every kind) unchanged: kinds tgw does not use are skipped with one info line each
and counted, never an error, and check-config accepts the directory (issue 17 item 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

from gwcore.plugins import file_catalog
from tests.plugins.test_file_catalog import FakeSite, Running, site_config

DUMP = Path(__file__).resolve().parents[1] / "data" / "consul-config-read"
# service-resolver is read (subsets, settings), not skipped
SKIPPED = ("exported-services", "service-router", "service-splitter")


def _site(tmp_path: Path) -> FakeSite:
    shutil.copytree(DUMP, tmp_path / "catalog")
    config = site_config(tmp_path, {"paths": ["catalog"], "poll_interval": "0.5s"})
    return FakeSite("main", config)


def test_check_config_accepts_a_config_read_directory(tmp_path: Path):
    """tgw check-config's hook reports no problem for the whole directory."""
    site = _site(tmp_path)
    assert file_catalog.tgw_validate_site_config(site.config) == []


def test_unused_kinds_are_skipped_with_one_info_line_each_and_counted(tmp_path: Path):
    """The gateway's linked services are routed; each skipped entry is logged once at
    info level (not again on the next poll) and counted by kind; nothing is an error."""
    site = _site(tmp_path)
    running = Running(site)
    try:
        assert {d.name for d in running.last.destinations} == {"billing", "ldap"}
        running.tick()
        infos = [e for e in site.log_events if e["log_level"].name == "info"]
        skipped = [e["entry"] for e in infos if "skipped" in e.get("entry", "")]
        assert len(skipped) == len(SKIPPED)
        assert all(any(kind in line for line in skipped) for kind in SKIPPED)
        assert not any("service-resolver" in line for line in skipped)
        assert site.error_lines() == [] and site.errors() == 0
        for kind in SKIPPED:
            labels = {"site": "main", "source": "file_catalog", "kind": kind}
            value = site.metrics.registry.get_sample_value("tgw_catalog_skipped_entries", labels)
            assert value == 1, kind
        (tmp_path / "catalog" / "exported-services.json").unlink()
        running.tick()
        labels = {"site": "main", "source": "file_catalog", "kind": "exported-services"}
        assert site.metrics.registry.get_sample_value("tgw_catalog_skipped_entries", labels) == 0
    finally:
        running.source.stop()
