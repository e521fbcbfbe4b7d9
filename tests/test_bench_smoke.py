"""The gateway benchmark's quick mode runs end to end, so ``bench/gateways.py`` cannot rot.

The real topology runs every peer: tgw, HAProxy and nginx (stream module) as gateways,
wrk as the load generator. They are required: ``make test`` (and .ci/run) install
them, and a machine without them fails here, naming what is missing, rather than
passing on the stand-ins. The Python stand-ins (``--fallback``) are checked on their
own. Figures are not asserted: only that every path check passed (the benchmark
verifies each gateway's mTLS path before measuring it) and a figure came out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import gateways
from tests.harness import SLOW_TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SLOW_TIMEOUT)]

PEERS = ("tgw-w1", "haproxy-t1", "nginx-w1")


def run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert (
        gateways.main(["--quick", "--no-install", "--workers", "1,2", "--out", str(out), *args])
        == 0
    )
    return json.loads(out.read_text())["results"]


def test_the_benchmarks_tools_are_installed() -> None:
    """haproxy, nginx with its stream module, and wrk are on this machine (``make test``
    installs them); without them the peers below cannot run, and that is a failure."""
    missing = [tool for tool in ("haproxy", "nginx", "wrk") if shutil.which(tool) is None]
    if not Path(gateways.STREAM_MODULE).exists():
        missing.append(f"libnginx-mod-stream ({gateways.STREAM_MODULE})")
    assert not missing, f"missing {', '.join(missing)}: run `make test` or .ci/run to install"
    assert gateways.ensure_tools(install=False)


def test_quick_mode_with_python_stand_ins_measures_tgw(tmp_path: Path) -> None:
    """``--fallback``: tgw with 1 and 2 workers between the Python stand-ins."""
    results = run(tmp_path, "--fallback")
    for name in ("tgw-w1", "tgw-w2"):
        assert results[name]["keepalive_1k"]["value"] > 0
        assert results[name]["idle"]["rss_total_kib_per_conn"] > 0


def test_quick_mode_runs_every_peer_in_the_real_topology(tmp_path: Path) -> None:
    """tgw, HAProxy and nginx each pass the path check and produce every scenario's
    figure against the nginx upstream, measured by wrk."""
    results = run(tmp_path, "--only", ",".join(PEERS), "--idle", "20")
    assert sorted(results) == sorted(PEERS)
    for name in PEERS:
        assert results[name]["info"]["kind"] == name.split("-")[0]
        for scenario in ("keepalive_1k", "new_conn", "bulk_1m", "originate_1k"):
            assert results[name][scenario]["value"] > 0, (name, scenario)
        assert results[name]["idle"]["rss_total_kib_per_conn"] > 0, name


def test_the_codec_floor_measures_h11(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.codec_floor`` runs the proxied exchange through two real h11 connections
    (its assertions check every event of it) and prints a positive CPU figure."""
    from bench import codec_floor

    assert codec_floor.main(["-n", "50"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("h11: ") and float(line.split()[1]) > 0


def test_the_relay_floor_relays_keepalive_and_bulk_in_both_modes(tmp_path: Path) -> None:
    """``--floor``: the bare Python relay (``bench.relay_floor``), with memory BIOs and with
    OpenSSL on the socket, carries wrk's keep-alive and bulk load through the sidecar
    (the benchmark checks the bytes it counted against what the client read) and gets
    CPU figures, so the floor the performance report compares with is measured, not
    assumed. It serves only those two scenarios."""
    names = ("floor-bio", "floor-socket")
    results = run(tmp_path, "--floor", "--only", ",".join(names), "--idle", "0")
    assert sorted(results) == sorted(names)
    for name in names:
        assert sorted(k for k in results[name] if k != "info") == ["bulk_1m", "keepalive_1k"]
        for scenario in ("keepalive_1k", "bulk_1m"):
            assert results[name][scenario]["value"] > 0, (name, scenario)
            assert results[name][scenario]["cpu_per_unit"] > 0, (name, scenario)


@pytest.mark.parametrize("gateway", ["nginx", "floor-socket"])
def test_the_cost_counter_measures_a_peer_or_the_floor(
    gateway: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench.cost --gateway`` runs its fixed keep-alive load through a peer or the
    floor relay and prints that gateway's CPU per request; instruction counts are
    refused for a peer (callgrind counts one Python or tgw process)."""
    from bench import cost

    assert cost.main(["--measure", "cpu", "-n", "50", "--warmup", "5", "--gateway", gateway]) == 0
    assert f"µs CPU per request ({gateway})" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cost.main(["--measure", "instructions", "--gateway", "haproxy"])
