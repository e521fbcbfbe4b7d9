"""Held connections: memory and idle CPU of many established mTLS connections, tgw
beside HAProxy and nginx in one run.

    .venv/bin/python -m bench.held                     # 5,000 connections, 1-minute trickle
    .venv/bin/python -m bench.held --conns 5000 --minute 20 --idle-seconds 20
    .venv/bin/python -m bench.held --quick             # 50 connections, a few seconds

For each gateway in turn (the same upstream, certificates and client): open
``--conns`` mTLS connections through it to an echo upstream and hold them; measure
the gateway's RSS and PSS before and after (increase per connection, and total RSS
per connection); leave them idle ``--idle-seconds`` and read the gateway's CPU
seconds (``/proc``, its whole process tree); then each connection sends one byte per
``--minute`` seconds, spread evenly (a real minute by default; shorter to fit a run),
for ``--rounds`` rounds, each byte read back from the echo (a byte not echoed is a
dropped connection); CPU and RSS again. Every wait is bounded; every process the
script starts is killed when it ends.

The upstream is a small asyncio echo server in its own process (an HTTP upstream
would time idle connections out). Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateways import (
    HOST,
    PLAIN,
    REPO,
    Gateway,
    Material,
    Processes,
    Upstream,
    cpu_seconds,
    free_port,
    memory_kib,
    sni,
    start_haproxy,
    start_nginx,
    start_tgw,
    wait_port,
)


def serve_echo(port: int) -> None:
    """The upstream: echo every byte, hold any number of connections (runs as a child)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, HOST, port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def open_held(ctx: ssl.SSLContext, port: int, count: int, budget: float) -> list[ssl.SSLSocket]:
    """``count`` mTLS connections, each proved by one echoed byte; bounded by ``budget`` s."""
    held = []
    deadline = time.monotonic() + budget
    for _ in range(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(held)} connections opened in {budget:.0f} s")
        sock = ctx.wrap_socket(
            socket.create_connection((HOST, port), timeout=10),
            server_hostname=sni(PLAIN),
        )
        sock.sendall(b"!")
        if sock.recv(1) != b"!":
            raise RuntimeError("the upstream did not echo")
        held.append(sock)
    return held


def trickle(held: list[ssl.SSLSocket], minute: float, rounds: int) -> int:
    """One byte per connection per ``minute``, spread evenly; returns connections lost."""
    lost = 0
    alive = list(held)
    gap = minute / max(1, len(alive))
    start = time.monotonic()
    for r in range(rounds):
        survivors = []
        for i, sock in enumerate(alive):
            due = start + r * minute + i * gap
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            try:
                sock.sendall(b".")
                if sock.recv(1) == b".":
                    survivors.append(sock)
                    continue
            except OSError:
                pass
            lost += 1
        alive = survivors
    return lost


def measure(gw: Gateway, m: Material, args: argparse.Namespace) -> dict[str, Any]:
    pids = gw.pids()
    rss0, pss0 = memory_kib(pids)
    began = time.monotonic()
    held = open_held(m.client_context(), gw.plain, args.conns, budget=max(120.0, args.conns * 0.1))
    opened_in = time.monotonic() - began
    time.sleep(1.0)
    pids = gw.pids()
    rss1, pss1 = memory_kib(pids)
    cpu0 = cpu_seconds(pids)
    time.sleep(args.idle_seconds)
    cpu1 = cpu_seconds(pids)
    rss_idle, _ = memory_kib(pids)
    lost = trickle(held, args.minute, args.rounds)
    cpu2 = cpu_seconds(pids)
    rss2, pss2 = memory_kib(pids)
    for sock in held:
        with contextlib.suppress(OSError):
            sock.close()
    n = args.conns
    return {
        "connections": n,
        "open_seconds": round(opened_in, 1),
        "rss_before_kib": rss0,
        "rss_increase_kib_per_conn": round((rss1 - rss0) / n, 1),
        "pss_increase_kib_per_conn": round((pss1 - pss0) / n, 1),
        "rss_total_kib_per_conn": round(rss1 / n, 1),
        "rss_after_idle_kib": rss_idle,
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / args.idle_seconds, 2),
        "trickle_cpu_percent": round(100 * (cpu2 - cpu1) / (args.minute * args.rounds), 2),
        "rss_after_trickle_kib": rss2,
        "pss_after_trickle_kib": pss2,
        "lost": lost,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.held", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--minute", type=float, default=60.0, help="seconds per trickle round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="tgw-w1,haproxy-t1,nginx-w1")
    parser.add_argument("--quick", action="store_true", help="50 connections, 2 s phases")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    if args.quick:
        args.conns, args.idle_seconds, args.minute, args.rounds = 50, 2.0, 2.0, 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.conns + 4096)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="tgw-held-"))
    workdir.chmod(0o755)  # nginx workers read the leaves
    procs = Processes(workdir)
    results: dict[str, Any] = {}
    starters = {
        "tgw-w1": lambda m, up: start_tgw(procs, m, up, 1),
        "haproxy-t1": lambda m, up: start_haproxy(procs, m, up, 1),
        "nginx-w1": lambda m, up: start_nginx(procs, m, up, 1),
    }
    try:
        m = Material.create(workdir / "pki")
        port = free_port()
        echo = procs.start(
            "echo",
            [sys.executable, "-m", "bench.held", "--serve-echo", str(port)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_port(port, proc=echo)
        up = Upstream(port, port, port)
        for name in [n for n in args.only.split(",") if n]:
            print(f"== {name}", flush=True)
            gw = starters[name](m, up)
            try:
                results[name] = measure(gw, m, args)
                print("   " + json.dumps(results[name]), flush=True)
            finally:
                if gw.proc is not None:
                    procs.stop(gw.proc)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
