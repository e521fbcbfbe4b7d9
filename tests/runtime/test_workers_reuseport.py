"""``worker_listeners = "reuseport"`` with the real twistd: each worker listens on its
own socket (``SO_REUSEPORT``) and the kernel spreads connections over them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Upstream, hello
from tests.integration.test_twistd import (
    STOP_TIMEOUT,
    Ports,
    Program,
    http_through,
    metric,
    spawn,  # noqa: F401  (the fixture)
    start_connect,
    start_gateway,
    wait_for,
    write_catalog,
    write_config,
)
from tests.runtime.test_workers import two_workers

pytestmark = pytest.mark.integration


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of every TCP socket listening on 127.0.0.1:``port`` (the kernel's
    own table, /proc/net/tcp: state 0A is LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            found.add(inode)
    return found


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_each_worker_has_its_own_listening_socket_with_reuseport(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
    request: pytest.FixtureRequest,
    mode: str,
) -> None:
    """``shared``: one listening socket, inherited by both workers. ``reuseport``: two,
    one in each worker, none in the supervisor; connections are served either way and
    counted once each in the aggregated /metrics."""
    ports = Ports.pick()
    upstream = Upstream(hello(b"HTTP/1.0 200 OK\r\n\r\nfrom billing"))
    request.addfinalizer(upstream.close)
    write_catalog(tmp_path, {"billing": upstream.port})
    config = write_config(tmp_path, ports)
    extra = f'workers = 2\nworker_listeners = "{mode}"\n'
    config.write_text(config.read_text().replace("[gateway]\n", f"[gateway]\n{extra}", 1))
    twistd = start_gateway(spawn, config, ports)
    start_connect(spawn, config, ports, "billing")
    wait_for(lambda: "2 workers serving" in twistd.output(), "both workers serving", twistd)
    pids = wait_for(lambda: two_workers(twistd), "2 workers", twistd)

    listening = listening_inodes(ports.site)
    held = {index: socket_inodes(pid) & listening for index, pid in pids.items()}
    supervisor = socket_inodes(twistd.popen.pid) & listening
    if mode == "shared":
        assert len(listening) == 1 and held[0] == held[1] == listening == supervisor
    else:
        assert len(listening) == 2, listening
        assert held[0] and held[1] and not held[0] & held[1], held
        assert held[0] | held[1] == listening and not supervisor

    for _ in range(8):
        answer = http_through(ports.connect)
        assert b" 200 " in answer.split(b"\r\n", 1)[0], answer
    wait_for(
        lambda: metric(ports.admin, "tgw_authz_decisions_total", decision="allow") == 8.0,
        "8 decisions in the aggregated /metrics",
        twistd,
    )
    twistd.popen.terminate()
    twistd.popen.wait(STOP_TIMEOUT)
    assert "tgw workers stopped" in twistd.output(), twistd.describe()
