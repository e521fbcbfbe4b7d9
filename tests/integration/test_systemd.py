"""contrib/systemd with what this machine allows: the unit files through
``systemd-analyze verify``, and the real ``twistd -n tgw`` started the way systemd
starts it — a listening socket inherited as fd 3 with ``LISTEN_FDS``/``LISTEN_PID``/
``LISTEN_FDNAMES`` (socket activation, Twisted's ``systemd:`` endpoint) and a
``NOTIFY_SOCKET`` that receives READY/RELOADING/STOPPING (sd_notify)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gwcore.net.systemd import endpoint_problem, notify
from gwcore.runtime.config_check import check_config
from tests.integration.test_twistd import (
    BIN,
    REPO,
    STOP_TIMEOUT,
    Ports,
    http_through,
    spawn,  # noqa: F401  (the fixture)
    status,
    wait_for,
    write_catalog,
    write_config,
)

pytestmark = pytest.mark.integration
UNITS = REPO / "contrib" / "systemd"
AS_SYSTEMD_DOES = (
    "import os, sys; os.dup2(int(os.environ['FD']), 3); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[1], sys.argv[1:])"
)
"""``python -c`` program: the inherited socket as fd 3 and LISTEN_PID naming the process
that then execs twistd (as systemd sets them in the child it starts)."""


def test_unit_files_verify_cleanly(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts both units with no warning (unknown keys are
    only warnings, so stderr must be empty), with the paths pointed at this install."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in ("tgw.service", "tgw.socket"):
        text = (UNITS / unit).read_text().replace("/opt/tgw/bin", str(BIN))
        (tmp_path / unit).write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "tgw.service"), str(tmp_path / "tgw.socket")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def test_service_unit_says_what_the_issue_asks() -> None:
    """The unit runs ``twistd --nodaemon ... tgw``, is Type=notify, reloads by SIGHUP,
    stops by SIGTERM with time to drain, and is hardened (no new privileges, read-only
    system, no capabilities by default); the socket unit names its descriptor."""
    service = directives(UNITS / "tgw.service")
    assert service["Type"] == ["notify"]
    assert re.search(r"/twistd --nodaemon --pidfile= tgw --config ", service["ExecStart"][0])
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"] and service["SuccessExitStatus"] == ["SIGTERM"]
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
    ]:
        assert service[key] == [value], key
    socket_unit = directives(UNITS / "tgw.socket")
    assert socket_unit["FileDescriptorName"] == ["tgw-main"]
    listen = "systemd:domain=INET6:name=tgw-main"
    assert listen in (UNITS / "tgw.socket").read_text() and endpoint_problem(listen) is None


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("systemd:domain=INET:index=0", None),
        ("systemd:domain=INET6:name=tgw-main", None),
        ("systemd:domain=INET", "exactly one of index= or name="),
        ("systemd:domain=IPX:index=0", "domain must be one of"),
        ("systemd:domain=INET:index=x", "index must be a number"),
        ("systemd:domain=INET:index=0:port=3", "unknown option"),
    ],
)
def test_systemd_endpoints_are_checked_without_descriptors(
    tmp_path: Path, listen: str, problem: str | None
) -> None:
    """``tgw check-config`` (and ExecStartPre, which gets no descriptors) validates a
    ``systemd:`` listen by its syntax; Twisted's parser would fail for want of an fd."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    config.write_text(
        config.read_text().replace(f'"tcp:{ports.site}:interface=127.0.0.1"', f'"{listen}"')
    )
    problems = [str(p) for p in check_config(config).problems]
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and "sites.main.listen" in problems[0]


@pytest.fixture
def notifications() -> Iterator[tuple[str, socket.socket]]:
    """An abstract datagram socket standing in for systemd's notify socket."""
    name = f"tgw-test-notify-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.1)
    yield "@" + name, sock
    sock.close()


def received(sock: socket.socket, seen: list[str]) -> list[str]:
    """Every datagram that arrived so far, appended to ``seen``."""
    while True:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            return seen


def test_notify_without_notify_socket_sends_nothing() -> None:
    """Outside systemd (no NOTIFY_SOCKET, or a relative name) nothing is sent."""
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "relative"}) is False


def test_socket_activation_and_sd_notify_with_the_real_twistd(
    tmp_path: Path,
    notifications: tuple[str, socket.socket],
    spawn,  # noqa: F811  (the imported fixture, for tgw connect)
) -> None:
    """The site listens on the socket it inherited as fd 3 (named by LISTEN_FDNAMES)
    and serves through it; READY=1 arrives once it serves; SIGHUP gives RELOADING=1
    with MONOTONIC_USEC then READY=1; SIGTERM gives STOPPING=1 and a clean exit."""
    address, sock = notifications
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    config.write_text(
        config.read_text().replace(
            f'"tcp:{ports.site}:interface=127.0.0.1"', '"systemd:domain=INET:name=tgw-main"'
        )
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", ports.site))  # what tgw.socket's ListenStream does
    listener.listen(64)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "tgw-main",
        "NOTIFY_SOCKET": address,
        "FD": str(listener.fileno()),
    }
    out = (tmp_path / "twistd.out").open("wb")
    twistd = subprocess.Popen(
        [
            sys.executable, "-c", AS_SYSTEMD_DOES,
            str(BIN / "twistd"), "--pidfile=", "-n", "tgw", "--config", str(config),
        ],
        cwd=tmp_path, env=env, pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL,
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    listener.close()  # only the child holds it now
    log = tmp_path / "twistd.out"
    try:
        seen: list[str] = []
        wait_for(lambda: "READY=1" in "".join(received(sock, seen)), "READY=1", timeout=20)
        assert status(ports.admin, "/ready") == 200, log.read_text()
        connect = spawn(
            "tgw", "connect", "--service", "web", "--upstream", "billing",
            "--listen", f"tcp:{ports.connect}:interface=127.0.0.1", "--config", str(config),
            "--gateway", f"tcp:127.0.0.1:{ports.site}",
        )  # fmt: skip
        wait_for(lambda: "listening on" in connect.stdout(), "tgw connect to listen", connect)
        response = http_through(ports.connect)
        assert b" 200 " in response.split(b"\r\n", 1)[0], (response, log.read_text())

        seen.clear()
        twistd.send_signal(signal.SIGHUP)
        wait_for(lambda: len(received(sock, seen)) >= 2, "RELOADING=1 then READY=1")
        reloading, ready = seen[0].splitlines(), seen[1].splitlines()
        assert reloading[0] == "RELOADING=1", seen
        usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        assert ready[0] == "READY=1", seen

        seen.clear()
        twistd.send_signal(signal.SIGTERM)
        assert twistd.wait(STOP_TIMEOUT) == -signal.SIGTERM, log.read_text()
        assert any(m.startswith("STOPPING=1") for m in received(sock, seen)), seen
    finally:
        if twistd.poll() is None:
            twistd.kill()
            twistd.wait(5)
        out.close()


def test_with_workers_only_the_supervisor_notifies(
    tmp_path: Path,
    notifications: tuple[str, socket.socket],
    spawn,  # noqa: F811  (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``workers = 2``: one READY=1, from the supervisor (systemd's main PID) once both
    workers serve; the workers do not get NOTIFY_SOCKET; SIGTERM gives STOPPING=1."""
    address, sock = notifications
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\nworkers = 2\n", 1))
    twistd = spawn("twistd", "--pidfile=", "-n", "tgw", "--config", str(config))
    seen: list[str] = []
    wait_for(lambda: "READY=1" in "".join(received(sock, seen)), "READY=1", twistd)
    assert "2 workers serving" in twistd.output()
    assert status(ports.admin, "/ready") == 200
    time.sleep(0.3)  # a worker's READY would have arrived by now
    assert sum("READY=1" in m for m in received(sock, seen)) == 1, seen
    twistd.popen.send_signal(signal.SIGTERM)
    twistd.popen.wait(STOP_TIMEOUT)
    assert any(m.startswith("STOPPING=1") for m in received(sock, seen)), seen
