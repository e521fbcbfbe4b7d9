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

The harness reads in pieces: ``topology`` (addresses, names, scenarios), ``processes``
(children and their CPU/memory), ``material`` (certificates and catalog), ``peers`` (the
upstream, the sidecar and each gateway under test, with the path check), ``load`` (wrk,
Python stand-ins, idle connections); this module plans the runs and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import hold_idle, python_upstream, run_python_load, run_wrk
from bench.material import Material
from bench.peers import (
    Gateway,
    Sidecar,
    sent_to_clients,
    start_haproxy,
    start_nginx,
    start_nginx_upstream,
    start_sidecar,
    start_tgw,
    tgw_metric,
    verify_path,
)
from bench.processes import Processes, cpu_seconds, memory_kib
from bench.relay_floor import start_floor
from bench.topology import APT_PACKAGES, HTTP, ORIGINATE, PLAIN, SCENARIOS, STREAM_MODULE, sni

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
    scenarios: frozenset[str] = frozenset()  # empty: all


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
        if target.l7 is not None:
            plan.append(("l7_keepalive_1k", target.l7, "", "/1k", s.conns, False))
    only = gw.info.get("scenarios")
    for key, port, server_name, path, conns, close in plan:
        if key in ("originate_1k", "l7_keepalive_1k") and gw.kind == "baseline":
            continue
        if (only is not None and key not in only) or (s.scenarios and key not in s.scenarios):
            continue
        runs = []
        for _ in range(s.reps):
            pids = gw.pids()
            cpu0 = cpu_seconds(pids)
            sent0 = sent_to_clients(gw) if gw.proc is not None else 0.0
            counted0 = tgw_metric(gw, "tgw_downstream_connections_total") if gw.kind == "tgw" else 0
            l7_requests0 = tgw_metric(gw, "tgw_http_requests_total") if gw.kind == "tgw" else 0
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
            if gw.kind == "tgw" and tgw_metric(gw, "tgw_downstream_connections_total") <= counted0:
                raise RuntimeError(
                    f"{gw.name} {key}: tgw_downstream_connections_total did not move"
                )
            if gw.kind == "tgw" and key == "l7_keepalive_1k":
                # Served request by request (L7 mode), not spliced: its request counter
                # moved with every request wrk made.
                served = tgw_metric(gw, "tgw_http_requests_total") - l7_requests0
                if served < r["requests"]:
                    raise RuntimeError(
                        f"{gw.name} {key}: tgw_http_requests_total moved by {served:.0f} for "
                        f"{r['requests']} requests: the destination was not served at L7"
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
    parser.add_argument(
        "--scenarios", default="", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})"
    )
    parser.add_argument(
        "--reuseport",
        action="store_true",
        help='also tgw with worker_listeners = "reuseport" for each worker count above 1',
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also the bare Python relay of bench.relay_floor (keep-alive and bulk)",
    )
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
        frozenset(x for x in args.scenarios.split(",") if x),
    )
    if s.scenarios - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(s.scenarios - set(SCENARIOS)))}")
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
        if args.reuseport:
            starters += [
                (
                    f"tgw-w{w}-reuseport",
                    lambda w=w: start_tgw(procs, m, up, w, listeners="reuseport"),
                )
                for w in s.workers
                if w > 1
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
            if args.floor:
                starters += [
                    (f"floor-{mode}", lambda mode=mode: start_floor(procs, m, up, mode))
                    for mode in ("bio", "socket")
                ]
        for name, start in starters:
            if only and name not in only:
                continue
            print(f"== {name}", flush=True)
            gw = start()
            sidecar = None
            try:
                if gw.proc is not None:
                    verify_path(m, gw, originate=not s.fallback and gw.kind != "floor")
                if name == "direct":
                    sidecar = Sidecar(None, up.plain, up.plain)  # type: ignore[arg-type]
                elif not s.fallback:
                    sidecar = start_sidecar(
                        procs,
                        m,
                        name,
                        (gw.plain, sni(PLAIN)),
                        (gw.originate, sni(ORIGINATE)),
                        (gw.l7, sni(HTTP)) if gw.l7 is not None else None,
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
