"""The gateway benchmark's quick mode runs end to end, so ``bench/gateways.py`` cannot rot.

With haproxy, nginx (stream module) and wrk installed, the real topology runs for
tgw and HAProxy; the Python stand-ins (no external tools) always run for tgw.
Figures are not asserted: only that every path check passed and a figure came out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gateways

pytestmark = pytest.mark.integration


def run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert (
        gateways.main(["--quick", "--no-install", "--workers", "1,2", "--out", str(out), *args])
        == 0
    )
    return json.loads(out.read_text())["results"]


def test_quick_mode_with_python_stand_ins_measures_tgw(tmp_path: Path) -> None:
    results = run(tmp_path, "--fallback")
    for name in ("tgw-w1", "tgw-w2"):
        assert results[name]["keepalive_1k"]["value"] > 0
        assert results[name]["idle"]["rss_total_kib_per_conn"] > 0


def test_quick_mode_runs_the_real_topology_when_the_tools_are_installed(tmp_path: Path) -> None:
    if not gateways.ensure_tools(install=False):
        # make test installs them (scripts/test-deps.sh); else the stand-ins above still ran.
        results = run(tmp_path, "--only", "tgw-w1")
        assert results["tgw-w1"]["keepalive_1k"]["value"] > 0
        return
    results = run(tmp_path, "--only", "tgw-w1,haproxy-t1", "--idle", "20")
    for name in ("tgw-w1", "haproxy-t1"):
        for scenario in ("keepalive_1k", "new_conn", "bulk_1m", "originate_1k"):
            assert results[name][scenario]["value"] > 0, (name, scenario)
