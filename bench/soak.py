"""Soak: a long mixed run with reloads, catalog edits and certificate rotations; does
anything grow?

    .venv/bin/python -m bench.soak --minutes 10

The gateway runs in this process (so its Python objects can be counted); an echo
upstream and the clients run in child processes. The clients, for the whole run:
``--workers`` threads each opening a connection, echoing a few KiB and closing, in a
loop; ``--held`` connections opened at the start, each echoing one byte every few
seconds and kept to the end. Meanwhile, every ``--every`` seconds, in turn: a SIGHUP
reload of an edited config (``idle_timeout`` toggled), a catalog edit (a second
endpoint added or removed), a rotation of the destination's leaf (file rewritten), and
of the trust roots file (an extra root added or removed).

Reported, after a warm-up (``--warmup`` s) and at the end (the held connections still
open), each after a full collection: RSS, open file descriptors, live Python objects
(and the types that grew most), connections open; plus the clients' counts
(connections served, failed, held connections lost). Every wait is bounded;
children are killed at the end. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.gateways import DC, HOST, PLAIN, REPO, TRUST_DOMAIN, free_port, sni, wait_port
from gwcore.contract import pki
from gwcore.policy.model import ServiceName


def clients(port: int, pki_dir: Path, seconds: float, workers: int, held: int) -> None:
    """Child: the traffic. Prints one JSON line of counts when ``seconds`` are over, then
    keeps the held connections open until its stdin closes (the end sample has them)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki_dir / "bundle.pem")
    ctx.load_cert_chain(pki_dir / "web.pem", pki_dir / "web-key.pem")
    counts = collections.Counter[str]()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((HOST, port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=sni(PLAIN))

    def short() -> None:
        payload = os.urandom(4096)
        while time.monotonic() < end:
            try:
                with connect() as sock:
                    sock.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        if not (data := sock.recv(65536)):
                            break
                        got += data
                outcome = "served" if got == payload else "bad_echo"
            except OSError as e:
                outcome = f"failed:{type(e).__name__}"
            with lock:
                counts[outcome] += 1

    def long() -> None:
        socks = []
        for _ in range(held):
            try:
                socks.append(connect())
            except OSError:
                counts["held_failed_to_open"] += 1
        while time.monotonic() < end:
            for sock in list(socks):
                try:
                    sock.sendall(b".")
                    if sock.recv(1) != b".":
                        raise OSError("no echo")
                except OSError:
                    counts["held_lost"] += 1
                    socks.remove(sock)
            time.sleep(min(2.0, max(0.0, end - time.monotonic())))
        counts["held_kept"] = len(socks)
        kept.extend(socks)

    kept: list[ssl.SSLSocket] = []
    threads = [threading.Thread(target=short) for _ in range(workers)]
    threads.append(threading.Thread(target=long))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    print(json.dumps(dict(counts)), flush=True)
    sys.stdin.read()
    for sock in kept:
        sock.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sample(service: Any) -> dict[str, Any]:
    gc.collect()
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return {
        "rss_kib": _rss_kib(),
        "fds": _fds(),
        "objects": sum(types.values()),
        "open_connections": service.admission.connections,  # retiring sites' too
        "_types": types,
    }


def _write_config(path: Path, port: int, certs: Path, idle: str) -> None:
    path.write_text(f"""
[gateway]
admin = ""
access_log = "access.log"
[sites.main]
listen = "tcp:{port}:interface={HOST}:backlog=1024"
name = "bench-gw"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
plugins = ["file_catalog", "file_certs", "intentions"]
idle_timeout = "{idle}"
[sites.main.file_catalog]
paths = ["catalog"]
poll_interval = "0.5s"
[sites.main.file_certs]
roots = ["{certs / "roots.pem"}"]
poll_interval = "0.5s"
[sites.main.file_certs.leaves]
{PLAIN} = {{ cert = "{certs / "billing.pem"}", key = "{certs / "billing-key.pem"}" }}
""")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    from gwcore.runtime.config_check import check_config
    from gwcore.runtime.service import GatewayService

    pki_dir = workdir / "pki"
    pki_dir.mkdir()
    ca_cert, ca_key = pki.new_ca(TRUST_DOMAIN)
    root_pem = pki.certificate_pem(ca_cert)
    extra_root, _ = pki.new_ca(TRUST_DOMAIN)
    (pki_dir / "bundle.pem").write_bytes(root_pem)
    web_chain, web_key = pki.leaf_pem(
        pki.service_leaf(ca_cert, ca_key, ServiceName("web"), DC, TRUST_DOMAIN)
    )
    (pki_dir / "web.pem").write_bytes(web_chain)
    (pki_dir / "web-key.pem").write_bytes(web_key)
    certs = workdir / "certs"
    certs.mkdir()

    def put(name: str, data: bytes) -> None:  # as certificate tooling does: write, rename
        aside = certs / f".{name}"
        aside.write_bytes(data)
        aside.replace(certs / name)

    def rotate_leaf() -> None:
        leaf = pki.service_leaf(ca_cert, ca_key, ServiceName(PLAIN), DC, TRUST_DOMAIN)
        chain, key = pki.leaf_pem(leaf)
        put("billing-key.pem", key)
        put("billing.pem", chain)

    rotate_leaf()
    put("roots.pem", root_pem)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ups = [free_port(), free_port()]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.held", "--serve-echo", str(p)],
            env=env,
            start_new_session=True,
        )
        for p in ups
    ]
    catalog = workdir / "catalog"
    catalog.mkdir()

    def write_catalog(endpoints: int) -> None:
        documents: list[dict[str, Any]] = [
            {"Kind": "terminating-gateway", "Name": "bench-gw", "Services": [{"Name": PLAIN}]},
            {
                "Kind": "service-intentions",
                "Name": PLAIN,
                "Sources": [{"Name": "web", "Action": "allow"}],
            },
        ]
        documents += [
            {
                "Node": f"ext{i}",
                "Address": HOST,
                "Service": {"ID": f"b{i}", "Service": PLAIN, "Port": p},
            }
            for i, p in enumerate(ups[:endpoints])
        ]
        aside = catalog / ".c.json"
        aside.write_text(json.dumps(documents))
        aside.replace(catalog / "c.json")

    write_catalog(1)
    port = free_port()
    config = workdir / "tgw.toml"
    _write_config(config, port, certs, "1h")
    result: dict[str, Any] = {"changes": collections.Counter()}

    async def soak() -> None:
        checked = check_config(config)
        assert checked.ok, checked.problems
        service = GatewayService(checked, config, reactor)
        service.startService()
        await service.started
        for p in ups:
            await deferToThread(wait_port, p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--client", str(port), str(pki_dir)],
            env={
                **env,
                "SOAK_SECONDS": str(args.minutes * 60),
                "SOAK_WORKERS": str(args.workers),
                "SOAK_HELD": str(args.held),
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        children.append(proc)
        began = time.monotonic()
        start = None
        step = 0
        while time.monotonic() - began < args.minutes * 60:
            await deferLater(reactor, args.every, lambda: None)
            if start is None and time.monotonic() - began >= args.warmup:
                start = _sample(service)
            kind = ("reload", "catalog", "leaf", "roots")[step % 4]
            if kind == "reload":
                _write_config(config, port, certs, "1h" if step % 8 else "59m")
                os.kill(os.getpid(), signal.SIGHUP)
            elif kind == "catalog":
                write_catalog(2 if step % 8 == 1 else 1)
            elif kind == "leaf":
                rotate_leaf()
            else:
                with_extra = step % 8 == 3
                roots = root_pem + (pki.certificate_pem(extra_root) if with_extra else b"")
                put("roots.pem", roots)
            result["changes"][kind] += 1
            step += 1
        line = await deferToThread(proc.stdout.readline)
        result["clients"] = json.loads(line or b"{}")
        await deferLater(reactor, 2.0, lambda: None)  # let the last short connections close
        end = _sample(service)  # the held connections still open, as at the start
        proc.stdin.close()
        await deferToThread(proc.wait, 30)
        assert start is not None
        grew = (end.pop("_types") - start.pop("_types")).most_common(10)
        result.update(start=start, end=end, types_grown=grew)
        result["reloads_applied"] = service.metrics.registry.get_sample_value(
            "tgw_config_reloads_total", {"result": "applied"}
        )
        await service.stopService()

    def finished(outcome: Any) -> None:
        if hasattr(outcome, "getTraceback"):
            result["error"] = outcome.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(soak()).addBoth(finished))
    try:
        reactor.run()
    finally:
        for child in children:
            child.kill()
            child.wait(5)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds before the start sample"
    )
    parser.add_argument("--every", type=float, default=2.0, help="seconds between changes")
    parser.add_argument("--workers", type=int, default=4, help="client threads (short connections)")
    parser.add_argument("--held", type=int, default=200, help="long-lived connections")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        env = os.environ
        clients(
            int(args.client[0]),
            Path(args.client[1]),
            float(env["SOAK_SECONDS"]),
            int(env["SOAK_WORKERS"]),
            int(env["SOAK_HELD"]),
        )
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="tgw-soak-"))
    old = os.getcwd()
    os.chdir(workdir)
    try:
        result = run(args, workdir)
    finally:
        os.chdir(old)
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
