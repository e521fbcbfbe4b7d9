"""Load generators and their readings: wrk (parsed), a Python mTLS load client and a Python
HTTP upstream for hosts without wrk/nginx, and idle held connections.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from bench.peers import Upstream
from bench.topology import HOST

if TYPE_CHECKING:
    from bench.material import Material


# --- load ---------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    found = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", output)
    if not found:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    requests = int(found[1])
    seconds = _ms(found[2] + found[3]) / 1e3
    read = float(found[4]) * _SIZES[found[5]]
    result = {"requests": requests, "seconds": seconds, "bytes": read}
    for pct in ("50", "99"):
        lat = re.search(rf"^\s+{pct}%\s+([\d.]+\w+)", output, re.M)
        if lat:
            result[f"p{pct}_ms"] = _ms(lat[1])
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non2xx"] = int(non2xx[1]) if non2xx else 0
    return result


def run_wrk(port: int, path: str, conns: int, duration: float, close: bool) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}{path}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True)
    return parse_wrk(out.stdout)


def run_python_load(
    m: Material, port: int, server_name: str, path: str, conns: int, duration: float
) -> dict[str, float]:
    """Stand-in for sidecar + wrk when they are not installed: keep-alive mTLS GETs."""
    latencies: list[float] = []
    read = [0]
    errors = [0]
    deadline = time.monotonic() + duration
    ctx = m.client_context()
    request = f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode()

    def client() -> None:
        try:
            with (
                socket.create_connection((HOST, port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                for _ in range(1_000_000):
                    if time.monotonic() >= deadline:
                        return
                    start = time.perf_counter()
                    tls.sendall(request)
                    response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
                    response.begin()
                    read[0] += len(response.read())
                    latencies.append((time.perf_counter() - start) * 1e3)
        except OSError:
            errors[0] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    seconds = time.monotonic() - began
    latencies.sort()

    def pick(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "requests": len(latencies),
        "seconds": seconds,
        "bytes": read[0],
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "errors": errors[0],
        "non2xx": 0,
    }


def hold_idle(m: Material, port: int, server_name: str, count: int) -> list[ssl.SSLSocket]:
    """Open ``count`` mTLS connections to the gateway and leave them idle."""
    ctx = m.client_context()
    held = []
    deadline = time.monotonic() + max(60.0, count * 0.02)
    for _ in range(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(held)} idle connections opened in time")
        raw = socket.create_connection((HOST, port), timeout=10)
        held.append(ctx.wrap_socket(raw, server_hostname=server_name))
    return held


def python_upstream(m: Material) -> tuple[Upstream, Callable[[], None]]:
    """A threaded HTTP/1.1 upstream for the fallback mode (no TLS ports)."""
    files = {"/1k": b"x" * 1024, "/1m": b"y" * (1 << 20)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = files.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()

    # The fallback has no TLS upstream: origination points at the plain port and
    # is not measured.
    return Upstream(port, port, port), stop
