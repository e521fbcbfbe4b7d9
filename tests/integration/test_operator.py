"""``tgw run`` as an operator sees it: the start line, a quiet log, JSON logs, drain and
reload lines, no pidfile, the version in ``/ready``. Real processes over 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwcore import __version__
from tests.harness import free_port, intentions, write_json
from tests.integration.test_twistd import (
    STOP_TIMEOUT,
    Ports,
    Program,
    http_get,
    reload,
    run,
    spawn,  # noqa: F401 - the fixture, used by name below
    status,
    wait_for,
    write_catalog,
    write_config,
)

pytestmark = pytest.mark.integration

CHATTER = ("Starting factory", "Stopping factory", " starting on ", " Closed)")


def start_run(launch: Callable[..., Program], config: Path, ports: Ports, *args: str) -> Program:
    """``tgw run --config FILE [args]``, returned once ``/ready`` answers 200."""
    gateway = launch("tgw", "run", "--config", str(config), *args)
    wait_for(lambda: status(ports.admin, "/ready") == 200, "GET /ready to answer 200", gateway)
    return gateway


def consul_errors(admin: int) -> float:
    """The sum of ``tgw_consul_errors_total`` over its labels (0 until it answers)."""
    answer = http_get(admin, "/metrics")
    if answer is None:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(answer[1])
        for sample in family.samples
        if sample.name == "tgw_consul_errors_total"
    )


def stop(gateway: Program) -> None:
    gateway.popen.send_signal(signal.SIGTERM)
    assert gateway.popen.wait(STOP_TIMEOUT) == -signal.SIGTERM, gateway.describe()


def test_tgw_run_logs_one_start_line_and_no_twisted_chatter_with_consul_unreachable(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """With Consul unreachable the HTTP client retries over and over; at the default level
    none of Twisted's per-factory or per-port lines reach the log, the start line says
    version, config, site and listener once, and no twistd.pid is written."""
    admin, consul = free_port(), free_port()
    config = tmp_path / "tgw.toml"
    config.write_text(
        f"""
[gateway]
admin = "tcp:{admin}:interface=127.0.0.1"
access_log = ""
state_dir = "state"

[sites.main]
listen = "tcp:0:interface=127.0.0.1"
name = "legacy-gw"
trust_domain = "example.consul"
plugins = ["consul_catalog", "builtin_ca", "intentions"]

[sites.main.consul_catalog]
address = "http://127.0.0.1:{consul}"
retry_min = "0.02s"
retry_max = "0.05s"
"""
    )
    gateway = spawn("tgw", "run", "--config", str(config))
    wait_for(lambda: consul_errors(admin) >= 20, "20 failed Consul requests", gateway)
    assert status(admin, "/ready") == 503
    stop(gateway)
    lines = gateway.output().splitlines()
    assert [line for line in lines if any(c in line for c in CHATTER)] == []
    starts = [line for line in lines if f"tgw {__version__} starting from" in line]
    assert len(starts) == 1, gateway.describe()
    assert f"starting from {config}: site main (terminating 'legacy-gw', dc1) " in starts[0]
    assert "listen tcp:0:interface=127.0.0.1" in starts[0]
    assert not (tmp_path / "twistd.pid").exists()


def test_log_level_debug_brings_the_chatter_back_and_logfile_takes_the_log(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """``--log-level debug`` shows what the default level hides (here the ports' lines);
    ``--logfile`` puts the application log in that file instead of standard output."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    gateway = start_run(spawn, config, ports, "--log-level", "debug", "--logfile", "app.log")
    stop(gateway)
    log = (tmp_path / "app.log").read_text()
    assert " starting on " in log, log
    assert f"tgw {__version__} starting from" in log
    assert "starting from" not in gateway.stdout()


def test_json_log_format_version_in_ready_and_drain_lines(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """``log_format = "json"``: every line of the application log is one JSON object;
    check-config's warnings are logged at start; /ready carries the version; SIGTERM with
    a connection open logs how many connections are drained and for how long at most, then
    one line when done."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports, site_extra='drain_timeout = "0.3s"')
    config.write_text(config.read_text().replace("[gateway]", '[gateway]\nlog_format = "json"'))
    write_json(tmp_path / "catalog" / "stray.json", intentions("nowhere", ("web", "allow")))
    gateway = start_run(spawn, config, ports)
    answer = http_get(ports.admin, "/ready")
    assert answer is not None and json.loads(answer[1])["version"] == __version__
    with socket.create_connection(("127.0.0.1", ports.site), timeout=5):
        wait_for(
            lambda: "connections_active" in (http_get(ports.admin, "/metrics") or (0, ""))[1],
            "the connection to be counted",
            gateway,
        )
        stop(gateway)
    records = [json.loads(line) for line in gateway.stderr().splitlines() if line.strip()]
    messages = [r["message"] for r in records]
    assert all({"time", "level", "namespace", "message"} <= r.keys() for r in records)
    assert any(m.startswith(f"tgw {__version__} starting from ") for m in messages)
    # check-config's warnings are logged once at start, and do not stop it.
    warned = [r for r in records if r["message"].startswith("warning: ")]
    assert len(warned) == 1 and warned[0]["level"] == "warn", warned
    assert "sites.main.file_catalog.paths: " in warned[0]["message"]
    assert "intentions for 'nowhere', which this site does not route" in warned[0]["message"]
    assert "site main: draining 1 connection(s) (up to 0.3 s)" in messages, messages
    assert any(m.startswith("site main: drained in ") for m in messages), messages


def test_reload_logs_what_changed(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """SIGHUP with a new site and a new destination: the log says what was added."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    gateway = start_run(spawn, config, ports)
    write_catalog(tmp_path, {"billing": ports.sample, "ledger": ports.sample})
    extra = f"""
[sites.extra]
listen = "tcp:{ports.spare}:interface=127.0.0.1"
name = "legacy-gw"
trust_domain = "example.consul"
plugins = ["file_catalog", "builtin_ca"]

[sites.extra.file_catalog]
paths = ["catalog"]
"""
    write_config(tmp_path, ports, more_sites=extra, site_extra='idle_timeout = "5m"')
    reload(gateway, ports, "applied")
    stop(gateway)
    out = gateway.output()
    assert f"reload: site extra added (listen tcp:{ports.spare}:interface=127.0.0.1)" in out
    assert "reload: site main changed: idle_timeout" in out, gateway.describe()
    assert "reload: site main: destinations added: ledger; removed: none" in out


def test_workers_log_in_the_same_format_and_level(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """With ``workers = 2`` and ``log_format = "json"``, the workers' lines are JSON too,
    without Twisted's chatter at the default level; ``--log-level debug`` reaches them."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    text = config.read_text().replace("[gateway]", '[gateway]\nworkers = 2\nlog_format = "json"')
    config.write_text(text)
    for level, chatter in (("info", 0), ("debug", 2)):
        gateway = start_run(spawn, config, ports, "--log-level", level)
        wait_for(lambda g=gateway: "2 workers serving" in g.stderr(), "both workers", gateway)
        stop(gateway)
        records = [json.loads(line) for line in gateway.stderr().splitlines() if line.strip()]
        messages = [r["message"] for r in records]
        assert any(m.startswith("worker 1: reactor") for m in messages), messages
        # Each worker listens on the inherited socket: one port line each, at debug only.
        listening = [m for m in messages if m.startswith("DownstreamFactory starting on")]
        assert len(listening) == chatter, messages


@pytest.mark.parametrize("workers", [1, 2])
def test_by_default_the_access_log_and_the_application_log_are_separate_streams(
    tmp_path: Path,
    workers: int,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """With ``access_log`` left at its default (``"-"``) and no ``--logfile``, standard
    output carries only access-log records (one JSON object per line, for a bare TCP
    connect here) and the application log (start line, workers, stop) goes to standard
    error, also with ``workers = 2``; so a pipeline reading one never parses the other."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    text = config.read_text().replace('access_log = "access.log"\n', "")
    config.write_text(text.replace("[gateway]", f"[gateway]\nworkers = {workers}"))
    gateway = start_run(spawn, config, ports)
    socket.create_connection(("127.0.0.1", ports.site), timeout=5).close()
    wait_for(lambda: '"close_cause":"no_data"' in gateway.stdout(), "its record", gateway)
    stop(gateway)
    records = [json.loads(line) for line in gateway.stdout().splitlines()]
    assert [(r["record_type"], r["close_cause"]) for r in records] == [("closed", "no_data")]
    app = gateway.stderr()
    assert f"tgw {__version__} starting from {config}" in app, gateway.describe()
    assert "tgw stopped" in app or "Server Shut Down." in app, gateway.describe()


def test_twistd_tgw_finds_the_config_like_tgw_does(tmp_path: Path) -> None:
    """``twistd -n tgw`` without --config in a directory without etc/tgw.toml: the same
    hint as tgw's subcommands, exit status 1, no traceback."""
    code, out, err = run("twistd", "--pidfile=", "-n", "tgw", cwd=tmp_path)
    assert code == 1
    assert (
        f"no config file given and etc/tgw.toml does not exist in {tmp_path}; "
        "pass --config FILE or set TGW_CONFIG=FILE"
    ) in out + err
    assert "Traceback" not in out + err
