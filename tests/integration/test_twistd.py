"""The real programs, driven as subprocesses over 127.0.0.1: ``twistd -n tgw`` and ``tgw``.

Each test writes its own config, catalog and state under ``tmp_path``, picks free
loopback ports, and runs ``.venv/bin/twistd`` / ``.venv/bin/tgw`` (found next to
the interpreter running pytest). Every wait is bounded in time and in rounds, and
every process a test starts is killed at teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    DC,
    GATEWAY,
    SLOW_TIMEOUT,
    free_port,
    gateway_entry,
    intentions,
    read_all,
    registration,
    sni_for,
    write_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(SLOW_TIMEOUT)]

BIN = Path(sys.executable).parent
REPO = Path(__file__).parents[2]
POLL = 0.05
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
SAMPLE_BODY = "hello from billing, through the real twistd\n"

T = TypeVar("T")


# --- processes ----------------------------------------------------------------------


@dataclass
class Program:
    """One child process whose stdout and stderr go to files (no pipe can fill up)."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def describe(self) -> str:
        return (
            f"--- {self.name} stdout ---\n{self.stdout()}"
            f"--- {self.name} stderr ---\n{self.stderr()}"
        )


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """Start ``BIN/<program> args...`` in ``tmp_path``; every one is killed at teardown."""
    started: list[Program] = []

    def start(program: str, *args: str) -> Program:
        index = len(started)
        out = tmp_path / f"{program}-{index}.stdout"
        err = tmp_path / f"{program}-{index}.stderr"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            popen = subprocess.Popen(
                [str(BIN / program), *args],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        launched = Program(f"{program}#{index}", popen, out, err)
        started.append(launched)
        return launched

    yield start
    for launched in started:
        if launched.popen.poll() is None:
            launched.popen.terminate()
            try:
                launched.popen.wait(5)
            except subprocess.TimeoutExpired:
                launched.popen.kill()
                launched.popen.wait(5)


def wait_for(
    check: Callable[[], T | None], what: str, *watched: Program, timeout: float = START_TIMEOUT
) -> T:
    """Poll ``check`` until it returns something truthy; fail early if a watched child dies."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 1):
        result = check()
        if result:
            return result
        for program in watched:
            if program.popen.poll() is not None:
                raise AssertionError(
                    f"{program.name} exited with {program.popen.returncode} while waiting for "
                    f"{what}\n{program.describe()}"
                )
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    logs = "\n".join(p.describe() for p in watched)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs}")


def run(program: str, *args: str, cwd: Path, timeout: float = STOP_TIMEOUT) -> tuple[int, str, str]:
    """Run a short-lived program to completion (killed if it outlives ``timeout``)."""
    done = subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return done.returncode, done.stdout, done.stderr


# --- config and catalog -----------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    ports: list[int] = []
    for _ in range(count * 10):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError(f"could not find {count} distinct free ports")


@dataclass(frozen=True)
class Ports:
    admin: int
    sample: int
    site: int
    connect: int
    spare: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*free_ports(5))


def site_table(key: str, port: int, default_policy: str, plugins: list[str], extra: str) -> str:
    return f"""
[sites.{key}]
listen = "tcp:{port}:interface=127.0.0.1"
name = "{GATEWAY}"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
role = "terminating"
default_policy = "{default_policy}"
plugins = {json.dumps(plugins)}
handshake_timeout = "5s"
connect_timeout = "2s"
{extra}

[sites.{key}.file_catalog]
paths = ["catalog"]
poll_interval = "0.1s"
"""


def write_config(
    root: Path,
    ports: Ports,
    *,
    default_policy: str = "deny",
    plugins: tuple[str, ...] = ("file_catalog", "builtin_ca", "intentions"),
    site_extra: str = "",
    more_sites: str = "",
) -> Path:
    """The shape of etc/tgw.toml, on the test's ports, with state and catalog in ``root``."""
    text = f"""
[gateway]
admin = "tcp:{ports.admin}:interface=127.0.0.1"
access_log = "access.log"
state_dir = "state"

[sample_service]
listen = "tcp:{ports.sample}:interface=127.0.0.1"
body = {json.dumps(SAMPLE_BODY)}
{site_table("main", ports.site, default_policy, list(plugins), site_extra)}
{more_sites}
"""
    path = root / "tgw.toml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reload must never read a half-written file
    return path


def write_catalog(root: Path, services: dict[str, int]) -> None:
    """Register each service at its loopback port; ``web`` may call every one of them."""
    catalog = root / "catalog"
    write_json(catalog / "gateway.json", gateway_entry(*services))
    write_json(catalog / "registrations.json", [registration(s, p) for s, p in services.items()])
    write_json(
        catalog / "intentions.json",
        [intentions(s, ("web", "allow"), ("*", "deny")) for s in services],
    )


# --- talking to the processes ---------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str] | None:
    """``GET`` on 127.0.0.1 (no proxy); ``None`` when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return None
    finally:
        conn.close()


def status(port: int, path: str) -> int | None:
    answer = http_get(port, path)
    return answer[0] if answer is not None else None


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from ``/metrics``, or ``None`` if it is not exported (yet)."""
    answer = http_get(port, "/metrics")
    if answer is None or answer[0] != 200:
        return None
    for family in text_string_to_metric_families(answer[1]):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


def start_gateway(
    spawn: Callable[..., Program], config: Path, ports: Ports, *twistd_args: str
) -> Program:
    """``twistd --pidfile= [twistd_args] -n tgw --config FILE``, returned once ``/ready``
    answers 200."""
    twistd = spawn("twistd", "--pidfile=", *twistd_args, "-n", "tgw", "--config", str(config))
    wait_for(lambda: status(ports.admin, "/ready") == 200, "GET /ready to answer 200", twistd)
    return twistd


def start_connect(
    spawn: Callable[..., Program], config: Path, ports: Ports, upstream: str
) -> Program:
    """``tgw connect --service web``, returned once it prints that it is listening."""
    connect = spawn(
        "tgw",
        "connect",
        "--service",
        "web",
        "--upstream",
        upstream,
        "--listen",
        f"tcp:{ports.connect}:interface=127.0.0.1",
        "--config",
        str(config),
    )
    wait_for(lambda: "listening on" in connect.stdout(), "tgw connect to listen", connect)
    return connect


def reload(twistd: Program, ports: Ports, result: str) -> float:
    """Send SIGHUP; wait until ``tgw_config_reloads_total{result=...}`` rises, and return it."""
    before = metric(ports.admin, "tgw_config_reloads_total", result=result) or 0.0

    def risen() -> float | None:
        value = metric(ports.admin, "tgw_config_reloads_total", result=result)
        return value if value is not None and value > before else None

    twistd.popen.send_signal(signal.SIGHUP)
    return wait_for(risen, f"tgw_config_reloads_total{{result={result!r}}} to rise", twistd)


def http_through(port: int) -> bytes:
    """A plain HTTP/1.0 GET over a plain socket; the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: billing\r\n\r\n")
        return read_all(sock)


def echo_round_trip(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` on an open connection and read back as many bytes."""
    sock.sendall(payload)
    received = b""
    for _ in range(100):
        if len(received) >= len(payload):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def access_records(root: Path) -> list[dict]:
    path = root / "access.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the tests ------------------------------------------------------------------------


def test_twistd_lists_the_tgw_plugin_and_its_config_option(tmp_path: Path) -> None:
    """``twistd --help`` names the tgw plugin; ``twistd -n tgw --help`` documents --config."""
    code, out, err = run("twistd", "--help", cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^\s+tgw\s+\S", out, re.MULTILINE), out

    code, out, err = run("twistd", "-n", "tgw", "--help", cwd=tmp_path)
    assert code == 0, err
    assert "--config=" in out, out


@pytest.mark.parametrize(
    ("reactor_args", "reactor_class"),
    [
        ((), "gwcore.net.reactor.GatewayReactor (the gateway's epoll reactor)"),
        (("--reactor", "poll"), "twisted.internet.pollreactor.PollReactor (chosen by --reactor)"),
    ],
    ids=["gateway-reactor", "twistd-reactor-poll"],
)
def test_request_flows_through_tgw_connect_and_twistd_then_sigterm_stops_cleanly(
    tmp_path: Path,
    spawn: Callable[..., Program],
    reactor_args: tuple[str, ...],
    reactor_class: str,
) -> None:
    """A plain GET to ``tgw connect`` reaches the sample service through the real gateway;
    metrics, routes and the access log record it; SIGTERM shuts down cleanly within 15 s.
    Run on the gateway's own reactor (the default) and on one chosen with
    ``twistd --reactor``, which tgw keeps."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    twistd = start_gateway(spawn, config, ports, *reactor_args)
    assert f"reactor: {reactor_class}" in twistd.output(), twistd.describe()
    # What start-up built is exempt from the cyclic GC (no full-heap pauses under load).
    assert "start-up objects exempt from cyclic GC" in twistd.output(), twistd.describe()
    start_connect(spawn, config, ports, "billing")

    response = http_through(ports.connect)
    assert response.startswith(b"HTTP/1.") and b" 200 " in response.split(b"\r\n", 1)[0], response
    assert response.endswith(SAMPLE_BODY.encode()), response

    allowed = wait_for(
        lambda: metric(
            ports.admin, "tgw_authz_decisions_total", decision="allow", service="billing"
        ),
        "an allow decision in /metrics",
        twistd,
    )
    assert allowed == 1.0
    answer = http_get(ports.admin, "/routes")
    assert answer is not None and answer[0] == 200
    snis = {route["sni"] for site in json.loads(answer[1]) for route in site["routes"]}
    assert sni_for("billing") in snis

    records = wait_for(lambda: access_records(tmp_path), "an access-log record", twistd)
    assert len(records) == 1, records
    assert records[0]["source"].endswith("/svc/web")
    assert records[0]["destination"] == "billing"
    assert records[0]["decision"] == "allow"

    twistd.popen.send_signal(signal.SIGTERM)
    # After a clean shutdown twistd re-raises the signal it stopped for
    # (twisted.application.app._exitWithSignal), so the parent sees "killed by SIGTERM",
    # the status a supervisor such as systemd counts as a clean stop; it never exits 0 here.
    assert twistd.popen.wait(STOP_TIMEOUT) == -signal.SIGTERM, twistd.describe()
    assert "tgw stopped" in twistd.output()
    assert "Server Shut Down." in twistd.output()


PROBLEM_LINE = re.compile(r"^(?:tgw: )?(?P<file>.+?): (?P<key>[\w.()-]+): (?P<message>.+)$")


def problem_lines(text: str, file: str) -> set[tuple[str, str]]:
    """``(key, message)`` of every ``FILE: KEY: MESSAGE`` line (``tgw: `` prefix allowed)."""
    found = set()
    for line in text.splitlines():
        match = PROBLEM_LINE.match(line)
        if match and match["file"] == file:
            found.add((match["key"], match["message"]))
    return found


@pytest.mark.parametrize(
    ("settings", "keys"),
    [
        (
            {"default_policy": "maybe", "site_extra": "bogus_key = 1"},
            {"sites.main.default_policy", "sites.main.bogus_key"},
        ),
        (
            {"plugins": ("file_catalog", "builtin_ca", "intentions", "no_such_plugin")},
            {"sites.main.plugins"},
        ),
    ],
    ids=["core-keys", "unknown-plugin"],
)
def test_bad_config_stops_twistd_with_the_same_problems_check_config_prints(
    tmp_path: Path, settings: dict, keys: set[str]
) -> None:
    """twistd refuses a bad config quickly, printing exactly check-config's problem lines."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports, **settings)
    file = str(config)

    began = time.monotonic()
    code, _, err = run("twistd", "--pidfile=", "-n", "tgw", "--config", file, cwd=tmp_path)
    assert code != 0
    assert time.monotonic() - began < 10
    twistd_problems = problem_lines(err, file)

    check_code, _, check_err = run("tgw", "check-config", file, cwd=tmp_path)
    assert check_code == 1
    assert twistd_problems == problem_lines(check_err, file)
    assert {key for key, _ in twistd_problems} == keys, err
    assert http_get(ports.admin, "/ready") is None, "nothing may listen after a refused start"


def test_check_config_accepts_the_shipped_default(tmp_path: Path) -> None:
    """The repo's etc/tgw.toml passes ``tgw check-config``."""
    shipped = REPO / "etc" / "tgw.toml"
    code, out, err = run("tgw", "check-config", str(shipped), cwd=tmp_path)
    assert code == 0, err
    assert f"{shipped}: OK" in out.splitlines()


def test_sighup_rejects_a_bad_config_and_applies_a_good_one_without_cutting_connections(
    tmp_path: Path, spawn: Callable[..., Program], upstreams
) -> None:
    """SIGHUP with a bad file keeps the running config and says why; with a good file the
    changed site is replaced and a second site starts, while a connection opened before
    both reloads keeps echoing."""
    echo_upstream = upstreams()
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample, "echo": echo_upstream.port})
    config = write_config(tmp_path, ports)
    twistd = start_gateway(spawn, config, ports)
    start_connect(spawn, config, ports, "echo")

    with socket.create_connection(("127.0.0.1", ports.connect), timeout=10) as held:
        assert echo_round_trip(held, b"before any reload") == b"before any reload"

        write_config(tmp_path, ports, default_policy="maybe")
        assert reload(twistd, ports, "rejected") == 1.0
        rejection = wait_for(
            lambda: [line for line in twistd.output().splitlines() if "reload rejected" in line],
            "the rejection in the log",
            twistd,
        )
        assert any(f"{config}: sites.main.default_policy:" in line for line in rejection)
        assert status(ports.admin, "/ready") == 200
        assert echo_round_trip(held, b"after the rejected reload") == b"after the rejected reload"

        second = site_table(
            "second", ports.spare, "deny", ["file_catalog", "builtin_ca", "intentions"], ""
        )
        write_config(tmp_path, ports, default_policy="allow", more_sites=second)
        assert reload(twistd, ports, "applied") == 1.0
        assert metric(ports.admin, "tgw_config_reloads_total", result="rejected") == 1.0

        def both_sites_ready() -> bool:
            answer = http_get(ports.admin, "/ready")
            return answer is not None and answer[0] == 200 and "second" in answer[1]

        wait_for(both_sites_ready, "both sites ready", twistd)
        answer = http_get(ports.admin, "/config")
        assert answer is not None
        assert json.loads(answer[1])["sites"]["main"]["default_policy"] == "allow"
        assert echo_round_trip(held, b"after the applied reload") == b"after the applied reload"

    with socket.create_connection(("127.0.0.1", ports.connect), timeout=10) as fresh:
        assert echo_round_trip(fresh, b"a new connection") == b"a new connection"
    with socket.create_connection(("127.0.0.1", ports.spare), timeout=10):
        pass  # the new site accepts connections
    assert twistd.popen.poll() is None


def test_connection_held_across_a_reload_outlives_the_old_sites_drain_timeout(
    tmp_path: Path, spawn: Callable[..., Program], upstreams
) -> None:
    """A reload never cuts a live connection (gwcore/runtime/service.py's contract): a connection
    on a replaced site still echoes after that site's drain_timeout has passed."""
    echo_upstream = upstreams()
    ports = Ports.pick()
    write_catalog(tmp_path, {"echo": echo_upstream.port})
    drain = 'drain_timeout = "0.3s"'
    config = write_config(tmp_path, ports, site_extra=drain)
    twistd = start_gateway(spawn, config, ports)
    start_connect(spawn, config, ports, "echo")

    with socket.create_connection(("127.0.0.1", ports.connect), timeout=10) as held:
        assert echo_round_trip(held, b"before") == b"before"
        write_config(tmp_path, ports, default_policy="allow", site_extra=drain)
        assert reload(twistd, ports, "applied") == 1.0
        time.sleep(1.0)  # well past the old site's drain_timeout
        assert echo_round_trip(held, b"after the drain timeout") == b"after the drain timeout"


def test_busy_ports_are_all_reported_at_once_naming_their_keys(tmp_path: Path) -> None:
    """When the site's and the admin endpoint's ports are taken, twistd exits 1 at once,
    with one line per busy port naming the file and key, and no traceback."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    blockers = [socket.socket(), socket.socket()]
    try:
        for blocker, port in zip(blockers, (ports.site, ports.admin), strict=True):
            blocker.bind(("127.0.0.1", port))
            blocker.listen(1)
        began = time.monotonic()
        code, out, err = run(
            "twistd", "--pidfile=", "-n", "tgw", "--config", str(config), cwd=tmp_path
        )
        elapsed = time.monotonic() - began
    finally:
        for blocker in blockers:
            blocker.close()
    assert code == 1
    assert elapsed < 10
    assert "Traceback" not in out + err
    assert err.splitlines() == [
        f"tgw: {config}: sites.main.listen: 127.0.0.1:{ports.site} is already in use",
        f"tgw: {config}: gateway.admin: 127.0.0.1:{ports.admin} is already in use",
        f"tgw: refusing to start: 2 port(s) in use ({config})",
    ]
