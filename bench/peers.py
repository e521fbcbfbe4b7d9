"""The processes around and under test: the nginx upstream, the HAProxy sidecar, and the
gateways compared (tgw, HAProxy, nginx); each proven on its path before it is measured.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.processes import process_tree
from bench.topology import (
    BIN,
    DC,
    HOST,
    HTTP,
    ORIGINATE,
    PLAIN,
    STREAM_MODULE,
    TRUST_DOMAIN,
    UPSTREAM_NAME,
    free_port,
    sni,
    wait_log,
    wait_port,
)

if TYPE_CHECKING:
    from bench.material import Material
    from bench.processes import Processes


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
    l7: int | None = None  # to the gateway's HTTP (L7) destination, when it has one


def start_sidecar(
    procs: Processes,
    m: Material,
    name: str,
    plain: tuple[int, str],
    originate: tuple[int, str],
    l7: tuple[int, str] | None = None,
) -> Sidecar:
    """HAProxy in TCP mode originating mTLS as a mesh client (``web``) would."""
    ports = (free_port(), free_port(), free_port())

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
        + (listen("l7", ports[2], l7) if l7 is not None else "")
    )
    proc = procs.start(f"sidecar-{name}", ["haproxy", "-db", "-f", str(conf)])
    wait_port(ports[0], proc=proc)
    return Sidecar(proc, ports[0], ports[1], ports[2] if l7 is not None else None)


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
    l7: int | None = None  # port for the HTTP (L7) destination's SNI, when measured

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc is not None else []


def start_tgw(
    procs: Processes,
    m: Material,
    up: Upstream,
    workers: int | None,
    policy: str = "intentions",
    prefix: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    start_timeout: float = 30.0,
    listeners: str = "shared",
) -> Gateway:
    """tgw with ``workers``; ``policy="allow"`` runs no authorization engine at all
    (``default_policy = "allow"``), to price the intentions engine on handshakes.
    ``prefix`` runs twistd under a tool (``bench.cost``: valgrind), with twistd
    ``options`` (a profiler); ``listeners="reuseport"`` gives each worker its own
    listening socket (``worker_listeners``)."""
    name = f"tgw-w{workers or 1}" + ("-allow" if policy == "allow" else "")
    if listeners != "shared":
        name += f"-{listeners}"
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
        "http.json": reg(HTTP, up.plain),
        "gateway.json": {
            "Kind": "terminating-gateway",
            "Name": "bench-gw",
            "Services": [
                {"Name": PLAIN},
                {"Name": ORIGINATE, "CAFile": str(m.upstream_ca), "SNI": UPSTREAM_NAME},
                {"Name": HTTP},
            ],
        },
        # L7: HTTP/1.1 request by request, kept-alive pooled connections to nginx.
        "defaults.json": {"Kind": "service-defaults", "Name": HTTP, "Protocol": "http"},
        "intentions.json": [
            {
                "Kind": "service-intentions",
                "Name": s,
                "Sources": [{"Name": "web", "Action": "allow"}],
            }
            for s in (PLAIN, ORIGINATE, HTTP)
        ],
    }
    for file, doc in docs.items():
        (catalog / file).write_text(json.dumps(doc))
    port, admin = free_port(), free_port()
    workers_line = f"workers = {workers}\n" if workers and workers > 1 else ""
    if listeners != "shared":
        workers_line += f'worker_listeners = "{listeners}"\n'
    leaves = "\n".join(
        f'{s} = {{ cert = "{m.leaves[s][0]}", key = "{m.leaves[s][1]}" }}'
        for s in (PLAIN, ORIGINATE, HTTP)
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
        [
            *prefix,
            str(BIN / "twistd"),
            "--pidfile=",
            *options,
            "-n",
            "tgw",
            "--config",
            str(config),
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_port(port, timeout=start_timeout, proc=proc)
    if (workers or 1) > 1:
        # The supervisor listens before any worker serves, so the port answers at once:
        # measure once every worker serves, not during their start-up.
        wait_log(procs.workdir / f"{name}.log", f"{workers} workers serving", start_timeout, proc)
    info: dict[str, Any] = {"workers": workers or 1, "policy": policy, "listeners": listeners}
    if policy == "allow":
        info["scenarios"] = ("new_conn",)  # only the handshake depends on the engine
    return Gateway(name, "tgw", proc, port, port, admin, info, l7=port)


def tgw_metric(gw: Gateway, name: str, **labels: str) -> float:
    """A tgw counter from its admin endpoint, summed over its series that carry ``labels``
    (whatever other labels they have: per-service series also name the namespace,
    partition and datacenter)."""
    from prometheus_client.parser import text_string_to_metric_families

    assert gw.admin is not None
    conn = http.client.HTTPConnection(HOST, gw.admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def sent_to_clients(gw: Gateway) -> float:
    """Bytes the gateway says it sent to its clients, from its own counters."""
    if gw.kind == "tgw":
        return tgw_metric(gw, "tgw_bytes_total", direction="downstream")
    if gw.kind == "haproxy":
        with socket.socket(socket.AF_UNIX) as unix:
            unix.settimeout(5)
            unix.connect(gw.info["stats"])
            unix.sendall(b"show stat\n")
            text = b"".join(iter(lambda: unix.recv(65536), b"")).decode()
        header = text.splitlines()[0].lstrip("# ").split(",")
        total = 0.0
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") == "FRONTEND" and row.get("pxname") in ("gw", "l7"):
                total += float(row["bout"])
        return total
    if gw.kind == "nginx":
        log = Path(gw.info["log"])
        return float(sum(int(x) for x in log.read_text().split())) if log.exists() else 0.0
    if gw.kind == "floor":  # bench.relay_floor's own count
        counter = Path(gw.info["counter"])
        return float(counter.read_text() or 0) if counter.exists() else 0.0
    return 0.0


def start_haproxy(procs: Processes, m: Material, up: Upstream, threads: int) -> Gateway:
    name = f"haproxy-t{threads}"
    port = free_port()
    crt_list = m.dir / f"{name}.crtlist"
    crt_list.write_text("".join(f"{m.leaves[s][2]} {sni(s)}\n" for s in (PLAIN, ORIGINATE, HTTP)))
    l7 = free_port()
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
# L7: an HTTP proxy (keep-alive both ways, connections to nginx reused)
frontend l7
  mode http
  timeout http-keep-alive 300s
  bind {HOST}:{l7} ssl crt-list {crt_list} ca-file {m.ca} verify required strict-sni
  default_backend http
backend http
  mode http
  http-reuse always
  server up {HOST}:{up.plain}
""")
    proc = procs.start(name, ["haproxy", "-db", "-f", str(conf)])
    wait_port(port, proc=proc)
    return Gateway(
        name, "haproxy", proc, port, port, info={"nbthread": threads, "stats": str(stats)}, l7=l7
    )


def start_nginx(procs: Processes, m: Material, up: Upstream, workers: int) -> Gateway:
    name = f"nginx-w{workers}"
    plain, originate, l7 = free_port(), free_port(), free_port()
    conf = m.dir / f"{name}.conf"
    # nginx 1.22's stream module has no per-SNI server blocks: the leaf is chosen by
    # $ssl_server_name (an unknown SNI finds no file and fails the handshake).
    # Origination needs proxy_ssl per server, so it listens on a second port.
    certs = m.dir / f"{name}-certs"
    certs.mkdir(exist_ok=True)
    for s in (PLAIN, ORIGINATE, HTTP):
        shutil.copy(m.leaves[s][0], certs / f"{sni(s)}.crt")
        shutil.copy(m.leaves[s][1], certs / f"{sni(s)}.key")
    # nginx 1.22 offers TLS 1.3 only when asked (its default list ends at 1.2); every
    # gateway here negotiates TLS 1.3 with the sidecar, so the handshakes compare.
    tls = f"""
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {certs}/$ssl_server_name.crt; ssl_certificate_key {certs}/$ssl_server_name.key;
    ssl_verify_client on; ssl_client_certificate {m.ca}; ssl_session_cache shared:{name}:10m;"""
    http_tls = tls.replace(f"shared:{name}:", f"shared:{name}-http:")  # a zone per module
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
http {{
  log_format sent $bytes_sent; access_log {m.dir}/{name}.sent sent buffer=64k flush=100ms;
  keepalive_requests 10000000; keepalive_timeout 300s;
  upstream service {{ server {HOST}:{up.plain}; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen {HOST}:{l7} ssl; {http_tls}
    location / {{
      proxy_pass http://service; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}
""")
    proc = procs.start(name, ["nginx", "-c", str(conf), "-e", str(m.dir / f"{name}.err")])
    wait_port(plain, proc=proc)
    info = {"worker_processes": workers, "log": str(m.dir / f"{name}.sent")}
    return Gateway(name, "nginx", proc, plain, originate, info=info, l7=l7)


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
    if gw.l7 is not None:
        checks.append((gw.l7, HTTP))
    for port, service in checks:
        body = mtls_get(m, port, sni(service))
        if not body.startswith(b"HTTP/1.1 200") or not body.endswith(b"x" * 1024):
            raise RuntimeError(
                f"{gw.name}: {service} did not answer through the gateway: {body[:200]!r}"
            )
    if gw.kind == "floor":
        return  # bench.relay_floor serves any name: it is a floor, not a gateway
    try:
        body = mtls_get(m, gw.plain, sni("nosuch"))
    except (ssl.SSLError, OSError):
        return
    if body.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{gw.name}: a wrong SNI was served")
