"""What one request (or handshake, or MB) costs the gateway, counted rather than timed.

Wall-clock and CPU-time figures move with whatever else the machine runs; counts on
a fixed load do not. This measures tgw between a Python mTLS client (h11, a fixed
number of requests) and the benchmark's nginx upstream, in one of three ways:

- ``instructions``: the gateway runs under ``valgrind --tool=callgrind`` with
  instrumentation off until the warm-up is done; the counters are zeroed, the fixed
  load runs, and the instructions executed (``Ir``) are divided by the count (with
  ``--workers N``, every process is counted and the counts are summed);
- ``syscalls``: ``strace -c -f`` attached to the gateway during the fixed load;
  system calls per unit, by name;
- ``cpu``: the gateway's CPU seconds per unit (cheap, but moves with the load).

    .venv/bin/python -m bench.cost --measure instructions --scenario keepalive -n 2000

Scenarios: ``keepalive`` (1 KiB GETs on one kept-alive connection), ``originate``
(the same to the TLS upstream: TLS origination), ``handshake`` (a new mTLS
connection per 1 KiB GET), ``bulk`` (1 MiB GETs on one connection; the unit is a
MB), ``l7`` (1 KiB GETs to the L7 destination: HTTP/1.1 request by request, a pooled
upstream connection). The client runs requests one after another on one connection, so every
request is one read and one write each way: the gateway's cost without batching.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h11

from bench.material import Material
from bench.peers import (
    Gateway,
    Upstream,
    start_haproxy,
    start_nginx,
    start_nginx_upstream,
    start_tgw,
)
from bench.processes import Processes, cpu_seconds
from bench.relay_floor import start_floor
from bench.topology import HOST, HTTP, ORIGINATE, PLAIN, sni

SCENARIOS = {  # name -> (service, path, new connection per request)
    "keepalive": (PLAIN, "/1k", False),
    "originate": (ORIGINATE, "/1k", False),
    "handshake": (PLAIN, "/1k", True),
    "bulk": (PLAIN, "/1m", False),
    "l7": (HTTP, "/1k", False),
}


class Client:
    """An mTLS HTTP/1.1 client (h11) to the gateway, as the web sidecar would be."""

    def __init__(self, m: Material, port: int, service: str) -> None:
        self.ctx = m.client_context()
        self.port = port
        self.server_name = sni(service)
        self.sock = None
        self.conn: h11.Connection | None = None

    def _open(self) -> None:
        raw = socket.create_connection((HOST, self.port), timeout=600)
        self.sock = self.ctx.wrap_socket(raw, server_hostname=self.server_name)
        self.conn = h11.Connection(h11.CLIENT)

    def get(self, path: str, close: bool) -> int:
        """One GET; the body's size. ``close`` asks for (and makes) a new connection."""
        if self.sock is None:
            self._open()
        assert self.sock is not None and self.conn is not None
        headers = [("Host", "b")] + ([("Connection", "close")] if close else [])
        self.sock.sendall(
            self.conn.send(h11.Request(method="GET", target=path, headers=headers))
            + self.conn.send(h11.EndOfMessage())
        )
        size = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(1 << 20))
                continue
            if isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"status {event.status_code}")
            if isinstance(event, h11.Data):
                size += len(event.data)
            if isinstance(event, h11.EndOfMessage):
                break
        if close:
            self.close()
        else:
            self.conn.start_next_cycle()
        return size

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = self.conn = None


def run(m: Material, port: int, scenario: str, count: int) -> float:
    """``count`` requests of ``scenario``; the units done (requests, or MB for bulk)."""
    service, path, close = SCENARIOS[scenario]
    client = Client(m, port, service)
    read = 0
    try:
        for _ in range(count):
            read += client.get(path, close)
    finally:
        client.close()
    return read / 1e6 if scenario == "bulk" else float(count)


def _callgrind(pid: int, *args: str) -> str:
    out = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=600
    )
    return out.stdout


def _instructions(pid: int) -> int:
    """Instructions executed since the last zeroing, summed over the threads."""
    text = _callgrind(pid, "-e", "Ir")
    threads = re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", text, re.M)
    if not threads:
        raise RuntimeError(f"no Ir counter from callgrind_control:\n{text}")
    return sum(int(t.replace(",", "")) for t in threads)


GATEWAYS = ("tgw", "nginx", "haproxy", "floor-bio", "floor-socket")
"""What ``--gateway`` measures: tgw, a peer (``nginx`` stream with one worker, ``haproxy``
with one thread; CPU and system calls only) or the Python floor (:mod:`bench.relay_floor`,
keep-alive and bulk only)."""


def _start(
    gateway: str, procs: Processes, m: Material, up: Upstream, workers: int, prefix: tuple[str, ...]
) -> Gateway:
    if gateway == "tgw":
        return start_tgw(procs, m, up, workers, prefix=prefix, start_timeout=600)
    if gateway == "nginx":
        return start_nginx(procs, m, up, workers)
    if gateway == "haproxy":
        return start_haproxy(procs, m, up, workers)
    return start_floor(procs, m, up, gateway.split("-", 1)[1], prefix=prefix)


def measure(
    scenario: str,
    how: str,
    count: int,
    warmup: int,
    workdir: Path,
    workers: int = 1,
    gateway: str = "tgw",
) -> dict:
    m = Material.create(workdir / "pki")
    procs = Processes(workdir)
    try:
        up = start_nginx_upstream(procs, m)
        prefix: tuple[str, ...] = ()
        if how == "instructions":
            prefix = (
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={workdir}/callgrind.%p",
                # workers are children: count them too (the supervisor idles)
                *(("--trace-children=yes",) if workers > 1 else ()),
            )
        gw = _start(gateway, procs, m, up, workers, prefix)
        assert gw.proc is not None
        pid = gw.proc.pid
        port = {"originate": gw.originate, "l7": gw.l7}.get(scenario) or gw.plain
        run(m, port, scenario, warmup)
        result: dict = {"scenario": scenario, "measure": how, "count": count}
        if how == "instructions":
            pids = gw.pids() if workers > 1 else [pid]
            for p in pids:
                _callgrind(p, "-i", "on")
            run(m, port, scenario, warmup)  # the code is instrumented again
            for p in pids:
                _callgrind(p, "-z")
            before = sum(_instructions(p) for p in pids)
            units = run(m, port, scenario, count)
            result["per_unit"] = (sum(_instructions(p) for p in pids) - before) / units
        elif how == "syscalls":
            out = workdir / "strace.txt"
            pids = [str(p) for p in gw.pids() for _ in (0, 1)]
            pids[0::2] = ["-p"] * (len(pids) // 2)
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *pids])
            time.sleep(1.0)  # attached
            units = run(m, port, scenario, count)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(60)
            result["per_unit"], result["by_name"] = _strace_counts(out.read_text(), units)
        else:
            cpu0 = cpu_seconds(gw.pids())
            units = run(m, port, scenario, count)
            result["per_unit"] = (cpu_seconds(gw.pids()) - cpu0) / units
        result["units"] = units
        return result
    finally:
        procs.stop_all()


def _strace_counts(text: str, units: float) -> tuple[float, dict[str, float]]:
    by_name: dict[str, float] = {}
    for line in text.splitlines():
        cells = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(cells) >= 5 and cells[3].isdigit() and not line.startswith("100.00"):
            by_name[cells[-1]] = int(cells[3]) / units
    by_name.pop("total", None)
    return sum(by_name.values()), dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="keepalive")
    parser.add_argument("--measure", choices=("instructions", "syscalls", "cpu"), default="cpu")
    parser.add_argument("-n", "--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tgw workers (instructions: summed over every process)",
    )
    parser.add_argument(
        "--gateway", choices=GATEWAYS, default="tgw", help="what is measured (default tgw)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.gateway in ("nginx", "haproxy") and args.measure == "instructions":
        parser.error(f"--measure instructions counts one Python or tgw process, not {args.gateway}")
    if args.gateway.startswith("floor") and args.scenario not in ("keepalive", "bulk"):
        parser.error("the floor relay serves the plain upstream only: keepalive or bulk")
    tool = {"instructions": "callgrind_control", "syscalls": "strace"}.get(args.measure)
    if tool and shutil.which(tool) is None:
        parser.error(f"--measure {args.measure} needs {tool}")
    workdir = Path(tempfile.mkdtemp(prefix="tgw-cost-"))
    workdir.chmod(0o755)
    stop: Callable[[], None] = lambda: None  # noqa: E731
    if not args.keep:
        stop = lambda: shutil.rmtree(workdir, ignore_errors=True)  # noqa: E731
    try:
        r = measure(
            args.scenario,
            args.measure,
            args.count,
            args.warmup,
            workdir,
            args.workers,
            args.gateway,
        )
    finally:
        stop()
    unit = {"bulk": "MB", "handshake": "handshake"}.get(args.scenario, "request")
    if args.measure == "instructions":
        done = f"{r['units']:g} {unit}s"
        print(f"{args.scenario}: {r['per_unit']:,.0f} instructions per {unit} ({done})")
    elif args.measure == "syscalls":
        names = ", ".join(f"{k} {v:.2f}" for k, v in r["by_name"].items() if v >= 0.01)
        print(f"{args.scenario}: {r['per_unit']:.2f} syscalls per {unit}: {names}")
    else:
        print(f"{args.scenario}: {r['per_unit'] * 1e6:.1f} µs CPU per {unit} ({args.gateway})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
