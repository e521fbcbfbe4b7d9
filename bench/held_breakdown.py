"""Where a held mTLS connection's memory goes, inside tgw.

    .venv/bin/python -m bench.held_breakdown --conns 2000

Runs a gateway in this process (the same config as ``bench.gateways``' tgw: file
catalog, file certificates, intentions) with ``tracemalloc`` on, an echo upstream and
a client in child processes (so their memory is not counted here). The client opens
``--conns`` mTLS connections and holds them; before and after, after a full
collection, the script reads the process RSS, the Python heap ``tracemalloc`` sees,
the live objects by type, and prints per connection: RSS increase, traced Python
memory (the top allocation sites), objects by type, and the rest (RSS not traced by
Python: OpenSSL's ``SSL`` objects, session and peer certificate, the allocator's
overhead). Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.gateways import (
    DC,
    HOST,
    PLAIN,
    REPO,
    TRUST_DOMAIN,
    Material,
    free_port,
    sni,
    wait_port,
)


def client(port: int, pki_dir: Path, count: int) -> None:
    """Child: open ``count`` echoed mTLS connections, say so, hold them until stdin closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki_dir / "ca.pem")
    ctx.load_cert_chain(pki_dir / "web.pem", pki_dir / "web-key.pem")
    held = []
    for _ in range(count):
        sock = ctx.wrap_socket(
            socket.create_connection((HOST, port), timeout=10), server_hostname=sni(PLAIN)
        )
        sock.sendall(b"!")
        assert sock.recv(1) == b"!"
        held.append(sock)
    print("ready", flush=True)
    sys.stdin.read()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _types() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread

    from gwcore.runtime.config_check import check_config
    from gwcore.runtime.service import GatewayService

    m = Material.create(workdir / "pki")
    upstream = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.held", "--serve-echo", str(upstream)],
        env=env,
        start_new_session=True,
    )
    children = [echo]
    catalog = workdir / "catalog"
    catalog.mkdir()
    documents = [
        {"Kind": "terminating-gateway", "Name": "bench-gw", "Services": [{"Name": PLAIN}]},
        {
            "Kind": "service-intentions",
            "Name": PLAIN,
            "Sources": [{"Name": "web", "Action": "allow"}],
        },
        {
            "Node": "ext",
            "Address": HOST,
            "Service": {"ID": "b1", "Service": PLAIN, "Port": upstream},
        },
    ]
    (catalog / "c.json").write_text(json.dumps(documents))
    port = free_port()
    config = workdir / "tgw.toml"
    config.write_text(f"""
[gateway]
admin = ""
access_log = ""
[sites.main]
listen = "tcp:{port}:interface={HOST}:backlog=4096"
name = "bench-gw"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
plugins = ["file_catalog", "file_certs", "intentions"]
max_connections = 100000
[sites.main.file_catalog]
paths = ["catalog"]
[sites.main.file_certs]
roots = ["{m.ca}"]
[sites.main.file_certs.leaves]
{PLAIN} = {{ cert = "{m.leaves[PLAIN][0]}", key = "{m.leaves[PLAIN][1]}" }}
""")
    result: dict[str, Any] = {}

    async def measure() -> None:
        checked = check_config(config)
        assert checked.ok, checked.problems
        service = GatewayService(checked, config, reactor)
        service.startService()
        await service.started
        await deferToThread(wait_port, upstream)
        gc.collect()
        before = tracemalloc.take_snapshot()
        rss0, types0 = _rss_kib(), _types()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.held_breakdown", "--client", str(port), str(m.dir)],
            env={**env, "HELD_CONNS": str(args.conns)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        children.append(proc)
        line = await deferToThread(proc.stdout.readline)
        assert line.strip() == b"ready", line
        await _settle(reactor)
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss1, types1 = _rss_kib(), _types()
        n = args.conns
        stats = after.compare_to(before, "lineno")
        traced = sum(s.size_diff for s in stats)
        result.update(
            connections=n,
            active=len(service.sites["main"].active),
            rss_increase_kib_per_conn=round((rss1 - rss0) / n, 2),
            traced_python_kib_per_conn=round(traced / 1024 / n, 2),
            untraced_kib_per_conn=round(((rss1 - rss0) * 1024 - traced) / 1024 / n, 2),
            top_sites=[
                (str(s.traceback[0]), round(s.size_diff / n, 1), round(s.count_diff / n, 2))
                for s in stats[: args.top]
            ],
            objects_per_conn=[
                (name, round(count / n, 2))
                for name, count in (types1 - types0).most_common(args.top)
            ],
        )
        proc.stdin.close()
        await service.stopService()

    def done(_: Any) -> None:
        reactor.stop()

    def failed(f: Any) -> None:
        result["error"] = f.getTraceback()
        reactor.stop()

    tracemalloc.start(1)
    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(measure()).addCallbacks(done, failed))
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        for child in children:
            child.kill()
            child.wait(5)
    return result


def _settle(reactor: Any, seconds: float = 1.0) -> Any:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.held_breakdown")
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client(int(args.client[0]), Path(args.client[1]), int(os.environ["HELD_CONNS"]))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.conns + 4096)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="tgw-breakdown-"))
    try:
        began = time.monotonic()
        result = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "error" in result:
        print(result["error"])
        return 1
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key}:")
            for row in value:
                print("   ", *row)
        else:
            print(f"{key}: {value}")
    print(f"({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
