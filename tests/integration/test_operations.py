"""Operations with the real ``twistd -n tgw`` (subprocesses on 127.0.0.1): what a
SIGTERM looks like from outside while the instance drains, with and without workers."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_twistd import (
    STOP_TIMEOUT,
    Ports,
    Program,
    http_get,
    spawn,  # noqa: F401  (fixture)
    start_gateway,
    wait_for,
    write_catalog,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_keeps_admin_up_with_ready_503_while_draining(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the fixture imported above)
    workers: int,
) -> None:
    """After SIGTERM the admin endpoint keeps answering, /ready with 503 and
    ``"draining": true``, for ``drain_delay``; the site still accepts meanwhile; then
    the process exits as twistd does after a clean stop. With ``workers = 2`` too
    (the supervisor passes SIGTERM on; worker 0 serves the admin endpoint)."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    text = config.read_text().replace(
        "[gateway]\n", f'[gateway]\ndrain_delay = "1.5s"\nworkers = {workers}\n', 1
    )
    config.write_text(text)
    twistd = start_gateway(spawn, config, ports)
    if workers > 1:
        wait_for(lambda: f"{workers} workers serving" in twistd.output(), "workers", twistd)
    twistd.popen.send_signal(signal.SIGTERM)
    answer = wait_for(
        lambda: (a := http_get(ports.admin, "/ready")) and a[0] == 503 and a,
        "/ready to answer 503",
        timeout=1.0,
    )
    assert json.loads(answer[1])["draining"] is True
    with socket.create_connection(("127.0.0.1", ports.site), timeout=2):
        pass  # still accepting during drain_delay
    assert twistd.popen.poll() is None
    started = time.monotonic()
    assert twistd.popen.wait(STOP_TIMEOUT) == -signal.SIGTERM, twistd.describe()
    assert time.monotonic() - started < STOP_TIMEOUT
    assert http_get(ports.admin, "/ready") is None
