"""Side-by-side benchmark: tgw against HAProxy and nginx as mTLS terminating gateways.

Run from the repo root (see ``bench/README.md``)::

    .venv/bin/python -m bench.gateways            # full: 3 repetitions, 10 s runs, 5,000 idle
    .venv/bin/python -m bench.gateways --quick    # a few seconds: smoke test

Topology, all on 127.0.0.1::

    wrk ──http──▶ sidecar (HAProxy, TCP mode, mTLS client: web leaf + destination SNI)
        ──mTLS──▶ gateway under test ──tcp or tls──▶ nginx upstream (/1k, /1m)

The sidecar and the upstream are the same processes for every gateway; only the
gateway differs. Every figure is the median of ``--reps`` runs and is printed with
its ratio to the best peer (HAProxy or nginx, any thread/worker count) measured in
the same invocation. Before a gateway is measured the script proves the path:
a request with the right SNI and the web leaf works, a wrong SNI fails, and after
each load run the gateway's own write counters (``/proc/PID/io``; for tgw also
``tgw_downstream_connections_total``) must have moved by what wrk read.

When haproxy, nginx or wrk are missing (and ``--no-install`` is given, or apt-get
fails), the script falls back to tgw alone with Python stand-ins (a threaded HTTP
upstream and an mTLS load client); the figures are then only a smoke test.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gwcore.contract import pki
from gwcore.policy.model import ServiceName
from gwcore.policy.sni import service_sni

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
DC = "dc1"
HOST = "127.0.0.1"
PLAIN, ORIGINATE = "billing", "billing-tls"
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


# --- processes ----------------------------------------------------------------------


class Processes:
    """Every child the benchmark starts; all are killed (group-wise) on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group per child: killed as a whole
            cwd=self.workdir,
            **kw,
        )
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Daemons that double-forked are still in the group: make sure nothing is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop(proc)


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (workers of a master)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over ``pids`` (PSS does not count shared pages twice)."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


# --- material -----------------------------------------------------------------------


@dataclass
class Material:
    dir: Path
    ca: Path
    upstream_ca: Path
    web: tuple[Path, Path, Path]  # cert chain, key, combined
    leaves: dict[str, tuple[Path, Path, Path]]
    upstream: tuple[Path, Path]

    @classmethod
    def create(cls, directory: Path) -> Material:
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = pki.new_ca(TRUST_DOMAIN)
        up_cert, up_key = pki.new_ca("upstream.bench.test", common_name="bench upstream CA")

        def write(name: str, leaf: Any) -> tuple[Path, Path, Path]:
            chain, key = pki.leaf_pem(leaf)
            paths = (directory / f"{name}.pem", directory / f"{name}-key.pem")
            paths[0].write_bytes(chain)
            paths[1].write_bytes(key)
            combined = directory / f"{name}-combined.pem"
            combined.write_bytes(chain + key)
            return (*paths, combined)

        ca = directory / "ca.pem"
        ca.write_bytes(pki.certificate_pem(ca_cert))
        upstream_ca = directory / "upstream-ca.pem"
        upstream_ca.write_bytes(pki.certificate_pem(up_cert))

        # HAProxy (the sidecar) checks the SNI it sends against the server's DNS SANs,
        # so the bench's leaves carry it beside the SPIFFE URI that tgw reads.
        def leaf(service: str) -> Any:
            return pki.service_leaf(
                ca_cert, ca_key, ServiceName(service), DC, TRUST_DOMAIN, dns_names=[sni(service)]
            )

        up_leaf = pki.issue_leaf(
            up_cert, up_key, "", dns_names=[UPSTREAM_NAME], common_name=UPSTREAM_NAME
        )
        upstream = write("upstream", up_leaf)
        return cls(
            directory,
            ca,
            upstream_ca,
            write("web", leaf("web")),
            {PLAIN: write(PLAIN, leaf(PLAIN)), ORIGINATE: write(ORIGINATE, leaf(ORIGINATE))},
            upstream[:2],
        )

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(self.web[0], self.web[1])
        return ctx


# --- upstream and sidecar -------------------------------------------------------------


@dataclass
class Upstream:
    plain: int
    tls: int  # one-way TLS (for origination)
    mtls: int  # the mesh leaf + client verification ("sidecar only" baseline)


def start_nginx_upstream(procs: Processes, m: Material) -> Upstream:
    www = m.dir / "www"
    www.mkdir(exist_ok=True)
    (www / "1k").write_bytes(b"x" * 1024)
    (www / "1m").write_bytes(b"y" * (1 << 20))
    up = Upstream(free_port(), free_port(), free_port())
    conf = m.dir / "upstream-nginx.conf"
    conf.write_text(f"""
daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 19000;
pid {m.dir}/upstream-nginx.pid; error_log {m.dir}/upstream-nginx.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log off; sendfile on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 300s; client_header_timeout 300s;
  client_body_temp_path {m.dir}/tmp; proxy_temp_path {m.dir}/tmp;
  fastcgi_temp_path {m.dir}/tmp; uwsgi_temp_path {m.dir}/tmp; scgi_temp_path {m.dir}/tmp;
  default_type application/octet-stream;
  server {{
    listen {HOST}:{up.plain}; listen {HOST}:{up.tls} ssl; root {www};
    ssl_certificate {m.upstream[0]}; ssl_certificate_key {m.upstream[1]};
  }}
  server {{
    listen {HOST}:{up.mtls} ssl; root {www};
    ssl_certificate {m.leaves[PLAIN][0]}; ssl_certificate_key {m.leaves[PLAIN][1]};
    ssl_verify_client on; ssl_client_certificate {m.ca};
  }}
}}
""")
    (m.dir / "tmp").mkdir(exist_ok=True)
    proc = procs.start("upstream-nginx", ["nginx", "-c", str(conf), "-e", str(m.dir / "ng.err")])
    wait_port(up.plain, proc=proc)
    return up


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    plain: int
    originate: int


def start_sidecar(
    procs: Processes, m: Material, name: str, plain: tuple[int, str], originate: tuple[int, str]
) -> Sidecar:
    """HAProxy in TCP mode originating mTLS as a mesh client (``web``) would."""
    ports = (free_port(), free_port())

    def listen(label: str, port: int, target: tuple[int, str]) -> str:
        target_port, server_name = target

        return f"""
listen {label}
  bind {HOST}:{port}
  server gw {HOST}:{target_port} ssl crt {m.web[2]} ca-file {m.ca} verify required \
    sni str({server_name}) no-ssl-reuse
"""

    conf = m.dir / f"sidecar-{name}.cfg"
    conf.write_text(
        """
global
  nbthread 1
  maxconn 9000
  tune.ssl.default-dh-param 2048
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
"""
        + listen("plain", ports[0], plain)
        + listen("originate", ports[1], originate)
    )
    proc = procs.start(f"sidecar-{name}", ["haproxy", "-db", "-f", str(conf)])
    wait_port(ports[0], proc=proc)
    return Sidecar(proc, *ports)


# --- gateways under test ------------------------------------------------------------


@dataclass
class Gateway:
    name: str
    kind: str  # tgw | haproxy | nginx | baseline
    proc: subprocess.Popen[bytes] | None
    plain: int  # port for the plain-upstream SNI
    originate: int  # port for the TLS-origination SNI
    admin: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []


def start_tgw(
    procs: Processes, m: Material, up: Upstream, workers: int | None, policy: str = "intentions"
) -> Gateway:
    """tgw with ``workers``; ``policy="allow"`` runs no authorization engine at all
    (``default_policy = "allow"``), to price the intentions engine on handshakes."""
    name = f"tgw-w{workers or 1}" + ("-allow" if policy == "allow" else "")
    root = m.dir / name
    catalog = root / "catalog"
    catalog.mkdir(parents=True, exist_ok=True)

    def reg(service: str, port: int) -> dict[str, Any]:
        sid = f"{service}-1"
        return {
            "Node": f"ext-{service}",
            "Address": HOST,
            "NodeMeta": {"external-node": "true", "external-probe": "true"},
            "Service": {"ID": sid, "Service": service, "Port": port},
            "Checks": [{"CheckID": f"{sid}-tcp", "Status": "passing", "ServiceID": sid}],
        }

    docs = {
        "plain.json": reg(PLAIN, up.plain),
        "originate.json": reg(ORIGINATE, up.tls),
        "gateway.json": {
            "Kind": "terminating-gateway",
            "Name": "bench-gw",
            "Services": [
                {"Name": PLAIN},
                {"Name": ORIGINATE, "CAFile": str(m.upstream_ca), "SNI": UPSTREAM_NAME},
            ],
        },
        "intentions.json": [
            {
                "Kind": "service-intentions",
                "Name": s,
                "Sources": [{"Name": "web", "Action": "allow"}],
            }
            for s in (PLAIN, ORIGINATE)
        ],
    }
    for file, doc in docs.items():
        (catalog / file).write_text(json.dumps(doc))
    port, admin = free_port(), free_port()
    workers_line = f"workers = {workers}\n" if workers and workers > 1 else ""
    leaves = "\n".join(
        f'{s} = {{ cert = "{m.leaves[s][0]}", key = "{m.leaves[s][1]}" }}'
        for s in (PLAIN, ORIGINATE)
    )
    config = root / "tgw.toml"
    config.write_text(f"""
[gateway]
admin = "tcp:{admin}:interface={HOST}"
access_log = ""
state_dir = "state"
{workers_line}
[sites.main]
listen = "tcp:{port}:interface={HOST}:backlog=4096"
name = "bench-gw"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
role = "terminating"
default_policy = "{"allow" if policy == "allow" else "deny"}"
plugins = ["file_catalog", "file_certs"{', "intentions"' if policy != "allow" else ""}]
max_connections = 100000
idle_timeout = "1h"

[sites.main.file_catalog]
paths = ["catalog"]

[sites.main.file_certs]
roots = ["{m.ca}"]

[sites.main.file_certs.leaves]
{leaves}
""")
    proc = procs.start(
        name,
        [str(BIN / "twistd"), "--pidfile=", "-n", "tgw", "--config", str(config)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_port(port, timeout=30, proc=proc)
    info: dict[str, Any] = {"workers": workers or 1, "policy": policy}
    if policy == "allow":
        info["scenarios"] = ("new_conn",)  # only the handshake depends on the engine
    return Gateway(name, "tgw", proc, port, port, admin, info)


def tgw_metric(gw: Gateway, prefix: str) -> float:
    """A tgw counter from its admin endpoint, summed over the series starting with ``prefix``."""
    assert gw.admin is not None
    conn = http.client.HTTPConnection(HOST, gw.admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def sent_to_clients(gw: Gateway) -> float:
    """Bytes the gateway says it sent to its clients, from its own counters."""
    if gw.kind == "tgw":
        return tgw_metric(gw, 'tgw_bytes_total{direction="downstream"')
    if gw.kind == "haproxy":
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(5)
            unix.connect(gw.info["stats"])
            unix.sendall(b"show stat\n")
            text = b"".join(iter(lambda: unix.recv(65536), b"")).decode()
        header = text.splitlines()[0].lstrip("# ").split(",")
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "gw" and row.get("svname") == "FRONTEND":
                return float(row["bout"])
        return 0.0
    if gw.kind == "nginx":
        log = Path(gw.info["log"])
        return float(sum(int(x) for x in log.read_text().split())) if log.exists() else 0.0
    return 0.0


def start_haproxy(procs: Processes, m: Material, up: Upstream, threads: int) -> Gateway:
    name = f"haproxy-t{threads}"
    port = free_port()
    crt_list = m.dir / f"{name}.crtlist"
    crt_list.write_text("".join(f"{m.leaves[s][2]} {sni(s)}\n" for s in (PLAIN, ORIGINATE)))
    conf = m.dir / f"{name}.cfg"
    stats = m.dir / f"{name}.stats"
    conf.write_text(f"""
global
  nbthread {threads}
  maxconn 9000
  stats socket {stats} mode 600 level user
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend gw
  bind {HOST}:{port} ssl crt-list {crt_list} ca-file {m.ca} verify required strict-sni
  use_backend plain if {{ ssl_fc_sni -i {sni(PLAIN)} }}
  use_backend originate if {{ ssl_fc_sni -i {sni(ORIGINATE)} }}
backend plain
  server up {HOST}:{up.plain}
backend originate
  server up {HOST}:{up.tls} ssl verify required ca-file {m.upstream_ca} \
    sni str({UPSTREAM_NAME}) verifyhost {UPSTREAM_NAME}
""")
    proc = procs.start(name, ["haproxy", "-db", "-f", str(conf)])
    wait_port(port, proc=proc)
    return Gateway(
        name, "haproxy", proc, port, port, info={"nbthread": threads, "stats": str(stats)}
    )


def start_nginx(procs: Processes, m: Material, up: Upstream, workers: int) -> Gateway:
    name = f"nginx-w{workers}"
    plain, originate = free_port(), free_port()
    conf = m.dir / f"{name}.conf"
    # nginx 1.22's stream module has no per-SNI server blocks: the leaf is chosen by
    # $ssl_server_name (an unknown SNI finds no file and fails the handshake).
    # Origination needs proxy_ssl per server, so it listens on a second port.
    certs = m.dir / f"{name}-certs"
    certs.mkdir(exist_ok=True)
    for s in (PLAIN, ORIGINATE):
        shutil.copy(m.leaves[s][0], certs / f"{sni(s)}.crt")
        shutil.copy(m.leaves[s][1], certs / f"{sni(s)}.key")
    # nginx 1.22 offers TLS 1.3 only when asked (its default list ends at 1.2); every
    # gateway here negotiates TLS 1.3 with the sidecar, so the handshakes compare.
    tls = f"""
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {certs}/$ssl_server_name.crt; ssl_certificate_key {certs}/$ssl_server_name.key;
    ssl_verify_client on; ssl_client_certificate {m.ca}; ssl_session_cache shared:{name}:10m;"""
    conf.write_text(f"""
load_module {STREAM_MODULE};
daemon off; master_process on; worker_processes {workers}; worker_rlimit_nofile 19000;
pid {m.dir}/{name}.pid; error_log {m.dir}/{name}.err warn;
events {{ worker_connections 20000; }}
stream {{
  log_format sent $bytes_sent; map_hash_bucket_size 256;
  access_log {m.dir}/{name}.sent sent buffer=64k flush=100ms;
  map $ssl_server_name $plain_upstream {{ {sni(PLAIN)} {HOST}:{up.plain}; default {HOST}:1; }}
  server {{
    listen {HOST}:{plain} ssl; {tls}
    proxy_pass $plain_upstream;
  }}
  server {{
    listen {HOST}:{originate} ssl; {tls}
    proxy_pass {HOST}:{up.tls};
    proxy_ssl on; proxy_ssl_verify on; proxy_ssl_trusted_certificate {m.upstream_ca};
    proxy_ssl_name {UPSTREAM_NAME}; proxy_ssl_server_name on; proxy_ssl_session_reuse on;
  }}
}}
""")
    proc = procs.start(name, ["nginx", "-c", str(conf), "-e", str(m.dir / f"{name}.err")])
    wait_port(plain, proc=proc)
    info = {"worker_processes": workers, "log": str(m.dir / f"{name}.sent")}
    return Gateway(name, "nginx", proc, plain, originate, info=info)


# --- proving the path ---------------------------------------------------------------


def mtls_get(m: Material, port: int, server_name: str, path: str = "/1k") -> bytes:
    """One mTLS request straight to a gateway, as the web sidecar would send it.

    Every gateway must agree to TLS 1.3 (what the sidecar negotiates), so that the
    handshake scenario compares the same work.
    """
    ctx = m.client_context()
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        if tls.version() != "TLSv1.3":
            raise RuntimeError(f"port {port} negotiated {tls.version()}, not TLS 1.3")
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            try:
                data = tls.recv(65536)
            except (ssl.SSLZeroReturnError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def verify_path(m: Material, gw: Gateway, originate: bool = True) -> None:
    """The right SNI is served through the gateway; a wrong one is refused."""
    checks = [(gw.plain, PLAIN), (gw.originate, ORIGINATE)] if originate else [(gw.plain, PLAIN)]
    for port, service in checks:
        body = mtls_get(m, port, sni(service))
        if not body.startswith(b"HTTP/1.1 200") or not body.endswith(b"x" * 1024):
            raise RuntimeError(
                f"{gw.name}: {service} did not answer through the gateway: {body[:200]!r}"
            )
    try:
        body = mtls_get(m, gw.plain, sni("nosuch"))
    except (ssl.SSLError, OSError):
        return
    if body.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{gw.name}: a wrong SNI was served")


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


# --- the run ------------------------------------------------------------------------


@dataclass
class Settings:
    reps: int
    duration: float
    idle: int
    conns: int
    quick: bool
    fallback: bool
    workers: tuple[int, ...]


def measure(
    gw: Gateway, m: Material, s: Settings, target: Sidecar | None
) -> dict[str, dict[str, Any]]:
    """Every scenario ``s.reps`` times against one gateway; medians plus the raw runs."""
    results: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, int, str, str, int, bool]] = []  # key, port, sni, path, conns, close
    if target is None:  # fallback: Python load straight at the gateway
        plan.append(("keepalive_1k", gw.plain, sni(PLAIN), "/1k", 4, False))
    else:
        plan += [
            ("keepalive_1k", target.plain, "", "/1k", s.conns, False),
            ("new_conn", target.plain, "", "/1k", max(4, s.conns // 2), True),
            ("bulk_1m", target.plain, "", "/1m", 4, False),
            ("originate_1k", target.originate, "", "/1k", s.conns, False),
        ]
    only = gw.info.get("scenarios")
    for key, port, server_name, path, conns, close in plan:
        if key == "originate_1k" and gw.kind == "baseline":
            continue
        if only is not None and key not in only:
            continue
        runs = []
        for _ in range(s.reps):
            pids = gw.pids()
            cpu0 = cpu_seconds(pids)
            sent0 = sent_to_clients(gw) if gw.proc is not None else 0.0
            counted0 = (
                tgw_metric(gw, "tgw_downstream_connections_total{") if gw.kind == "tgw" else 0
            )
            if target is None:
                r = run_python_load(m, port, server_name, path, conns, s.duration)
            else:
                r = run_wrk(port, path, conns, s.duration, close)
            pids = gw.pids() or pids
            r["cpu_seconds"] = cpu_seconds(pids) - cpu0
            if r["requests"] == 0 or r["non2xx"]:
                raise RuntimeError(f"{gw.name} {key}: {r}")
            if gw.proc is not None:
                # Counters are updated as connections close, a moment after wrk exits.
                sent = 0.0
                for _ in range(60):
                    sent = sent_to_clients(gw) - sent0
                    if sent >= 0.9 * r["bytes"]:
                        break
                    time.sleep(0.1)
                else:
                    raise RuntimeError(
                        f"{gw.name} {key}: the gateway counted {sent:.0f} bytes sent but the "
                        f"client read {r['bytes']:.0f}: traffic did not go through it"
                    )
            if gw.kind == "tgw" and tgw_metric(gw, "tgw_downstream_connections_total{") <= counted0:
                raise RuntimeError(
                    f"{gw.name} {key}: tgw_downstream_connections_total did not move"
                )
            runs.append(r)
        value = [
            r["bytes"] / r["seconds"] / 1e6 if key == "bulk_1m" else r["requests"] / r["seconds"]
            for r in runs
        ]
        units = [r["bytes"] / 1e6 if key == "bulk_1m" else r["requests"] for r in runs]
        results[key] = {
            "value": statistics.median(value),
            "p50_ms": statistics.median(r.get("p50_ms", 0.0) for r in runs),
            "p99_ms": statistics.median(r.get("p99_ms", 0.0) for r in runs),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
            "cpu_per_unit": statistics.median(
                r["cpu_seconds"] / u if u else 0.0 for r, u in zip(runs, units, strict=True)
            ),
            "errors": sum(r["errors"] for r in runs),
            "runs": runs,
        }
    if gw.proc is not None and s.idle and only is None:
        # Once: a second hold of the same count reuses the memory the first one grew
        # and freed (the allocator keeps it), so only the first says what idle
        # connections cost. PSS and RSS increase per connection, and total RSS per
        # connection for reference.
        pids = gw.pids()
        rss0, pss0 = memory_kib(pids)
        held = hold_idle(m, gw.plain, sni(PLAIN), s.idle)
        time.sleep(0.5)
        rss1, pss1 = memory_kib(gw.pids())
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        results["idle"] = {
            "value": (pss1 - pss0) / s.idle,
            "rss_kib_per_conn": (rss1 - rss0) / s.idle,
            "rss_total_kib_per_conn": rss1 / s.idle,
        }
    return results


def ensure_tools(install: bool) -> bool:
    def missing():
        return [t for t in ("haproxy", "nginx", "wrk") if shutil.which(t) is None] or (
            [] if Path(STREAM_MODULE).exists() else ["libnginx-mod-stream"]
        )

    if missing() and install and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=300, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *APT_PACKAGES], env=env, timeout=600, check=False
        )
    return not missing()


def table(results: dict[str, dict[str, Any]], idle: bool) -> str:
    """Markdown: each gateway's medians and ratios to the best peer (HAProxy/nginx)."""
    peers = [n for n in results if n.startswith(("haproxy", "nginx"))]
    lines = [
        "| gateway | scenario | median | ratio to best peer | p50 ms | p99 ms (ratio) "
        "| gateway CPU s/unit (ratio) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, (label, unit) in [*SCENARIOS.items(), ("idle", ("idle mTLS connection", "KiB"))]:
        if key == "idle" and not idle:
            continue
        higher = key != "idle"
        values = [results[p][key] for p in peers if key in results[p]]
        best = (max if higher else min)((v["value"] for v in values), default=None)
        best_p99 = min((v["p99_ms"] for v in values if v.get("p99_ms")), default=None)
        best_cpu = min((v["cpu_per_unit"] for v in values if v.get("cpu_per_unit")), default=None)
        for name, res in results.items():
            r = res.get(key)
            if r is None:
                continue
            ratio = f"{r['value'] / best:.2f}" if best else "-"
            if key == "idle":
                lines.append(
                    f"| {name} | {label} | {r['value']:.1f} {unit} PSS ({r['rss_kib_per_conn']:.1f}"
                    f" RSS) | {ratio} | | | |"
                )
                continue
            p99 = f"{r['p99_ms']:.2f}" + (f" ({r['p99_ms'] / best_p99:.2f})" if best_p99 else "")
            cpu = r["cpu_per_unit"]
            cpu_text = (
                "-"
                if not cpu
                else f"{cpu * 1e6:.0f} µs"
                if unit != "MB/s"
                else f"{cpu * 1e3:.2f} ms/MB"
            )
            if cpu and best_cpu:
                cpu_text += f" ({cpu / best_cpu:.2f})"
            lines.append(
                f"| {name} | {label} | {r['value']:.0f} {unit} | {ratio} | {r['p50_ms']:.2f} "
                f"| {p99} | {cpu_text} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateways", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition of 1 s, 50 idle (smoke)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections to hold")
    parser.add_argument("--conns", type=int, default=32, help="wrk connections (keep-alive)")
    parser.add_argument("--only", default="", help="comma-separated gateway names to run")
    parser.add_argument("--workers", default="1,2", help="tgw worker counts to measure")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--fallback", action="store_true", help="tgw alone with Python stand-ins (smoke test)"
    )
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.idle = 1, 1.0, min(args.idle, 50)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.idle + 4096))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tools = not args.fallback and ensure_tools(not args.no_install)
    s = Settings(
        args.reps,
        args.duration,
        args.idle,
        args.conns,
        args.quick,
        not tools,
        tuple(int(w) for w in args.workers.split(",") if w),
    )
    only = {n for n in args.only.split(",") if n}
    workdir = Path(tempfile.mkdtemp(prefix="tgw-bench-"))
    workdir.chmod(0o755)  # nginx workers (user nobody) read the files and per-SNI leaves
    procs = Processes(workdir)
    stop_upstream: Callable[[], None] | None = None
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        m = Material.create(workdir / "pki")
        if s.fallback:
            print("haproxy/nginx/wrk not available: tgw alone with Python stand-ins (smoke only)")
            up, stop_upstream = python_upstream(m)
        else:
            up = start_nginx_upstream(procs, m)
        starters: list[tuple[str, Callable[[], Gateway]]] = [
            (f"tgw-w{w}", lambda w=w: start_tgw(procs, m, up, w)) for w in s.workers
        ]
        if not s.fallback:
            starters = [
                ("direct", lambda: Gateway("direct", "baseline", None, up.plain, up.plain)),
                (
                    "sidecar-only",
                    lambda: Gateway("sidecar-only", "baseline", None, up.mtls, up.mtls),
                ),
                *starters,
                ("tgw-w1-allow", lambda: start_tgw(procs, m, up, None, policy="allow")),
                *[(f"haproxy-t{t}", lambda t=t: start_haproxy(procs, m, up, t)) for t in (1, 2)],
                *[(f"nginx-w{w}", lambda w=w: start_nginx(procs, m, up, w)) for w in (1, 2)],
            ]
        for name, start in starters:
            if only and name not in only:
                continue
            print(f"== {name}", flush=True)
            gw = start()
            sidecar = None
            try:
                if gw.proc is not None:
                    verify_path(m, gw, originate=not s.fallback)
                if name == "direct":
                    sidecar = Sidecar(None, up.plain, up.plain)  # type: ignore[arg-type]
                elif not s.fallback:
                    sidecar = start_sidecar(
                        procs, m, name, (gw.plain, sni(PLAIN)), (gw.originate, sni(ORIGINATE))
                    )
                results[name] = measure(gw, m, s, sidecar)
                results[name]["info"] = {"kind": gw.kind, **gw.info}
                for key, r in results[name].items():
                    if "value" in r:
                        print(f"   {key}: {r['value']:.1f}", flush=True)
            finally:
                if sidecar is not None and sidecar.proc is not None:
                    procs.stop(sidecar.proc)
                if gw.proc is not None:
                    procs.stop(gw.proc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        procs.stop_all()
        if stop_upstream is not None:
            stop_upstream()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "uname": " ".join(os.uname()),
            "python": sys.version.split()[0],
        },
        "settings": s.__dict__,
        "seconds": round(time.monotonic() - began, 1),
        "results": results,
    }
    print()
    print(table(results, bool(s.idle)))
    print(f"\n{report['seconds']} s; medians of {s.reps} run(s) of {s.duration:g} s each")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
