"""Where everything of the gateway benchmark lives: loopback host, trust domain, names,
packages, and the scenarios it measures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gwcore.policy.model import ServiceName
from gwcore.policy.sni import service_sni

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
DC = "dc1"
HOST = "127.0.0.1"
PLAIN, ORIGINATE = "billing", "billing-tls"  # the two destinations: plain TCP, TLS upstream
HTTP = "billing-http"  # the L7 destination (service-defaults Protocol "http"), plain upstream
UPSTREAM_NAME = "upstream.bench.test"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
APT_PACKAGES = ("haproxy", "nginx", "libnginx-mod-stream", "wrk")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# scenario key -> (label, unit, higher is better)
SCENARIOS: dict[str, tuple[str, str]] = {
    "keepalive_1k": ("keep-alive 1 KiB", "req/s"),
    "new_conn": ("new connection per request", "conn/s"),
    "bulk_1m": ("1 MiB bulk", "MB/s"),
    "originate_1k": ("keep-alive 1 KiB, TLS origination", "req/s"),
    "l7_keepalive_1k": ("HTTP keep-alive 1 KiB, L7 (HTTP/1.1 proxy)", "req/s"),
}


def sni(service: str) -> str:
    return service_sni(ServiceName(service), DC, TRUST_DOMAIN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:g}s")


def wait_log(
    log: Path, line: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until ``line`` is in the ``log`` file a process writes (its start-up is over)."""
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {line!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {line!r} in {log} after {timeout:g}s")
        time.sleep(0.05)
