"""Run the fuzz targets under atheris (libFuzzer, coverage-guided) within a time budget.

``python -m fuzz.run --seconds 60`` runs every target for 60 s each, one process per
target, and prints one line per target: cases run, crashes. ``--runs N`` stops a
target after N cases instead (the figures in docs/reliability.md are from
``--runs 100000``). ``--one NAME`` is the child: it instruments ``gwcore`` (plugins included)
and ``fuzz`` for coverage and hands over to libFuzzer. New corpus entries go to
``var/fuzz/corpus/<target>`` (not the repository); a crashing input is written to
``var/fuzz/crash-<target>-*`` and the run fails.

Exit status: 0 when every target ran without a crash; 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
OUT = REPO / "var" / "fuzz"
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")
_STAT = re.compile(rb"#(\d+)\s")


def _child(name: str, seconds: int, runs: int) -> None:
    import atheris

    with atheris.instrument_imports(include=["gwcore", "fuzz"]):
        from fuzz.targets import TARGETS
    target = TARGETS[name]
    if target is None:
        raise SystemExit(f"{name}: not available on this branch")
    work = OUT / "corpus" / name
    work.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-artifact_prefix={OUT}/crash-{name}-",
        "-rss_limit_mb=2048",
        "-timeout=20",
        "-max_len=8192",
        "-print_final_stats=1",
        str(work),
        str(ROOT / "corpus" / name),
    ]
    if seconds:
        args.append(f"-max_total_time={seconds}")
    if runs:
        args.append(f"-runs={runs}")
    atheris.Setup(args, target)
    atheris.Fuzz()


def _parent(names: list[str], seconds: int, runs: int) -> int:
    from fuzz.targets import PENDING, TARGETS

    OUT.mkdir(parents=True, exist_ok=True)
    failed = False
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    for name in names or list(TARGETS):
        if TARGETS.get(name, ...) is None:
            print(f"{name:16} skipped: {PENDING.get(name, 'not registered')}", flush=True)
            continue
        started = time.monotonic()
        cmd = [sys.executable, "-m", "fuzz.run", "--one", name]
        cmd += ["--seconds", str(seconds), "--runs", str(runs)]
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        log = OUT / f"{name}.log"
        log.write_bytes(proc.stdout)
        done = _DONE.findall(proc.stdout)
        count = (
            int(done[-1][0])
            if done
            else max((int(n) for n in _STAT.findall(proc.stdout)), default=0)
        )
        crashed = proc.returncode != 0
        failed |= crashed
        took = time.monotonic() - started
        status = f"CRASH (exit {proc.returncode}, see {log})" if crashed else "0 crashes"
        print(f"{name:16} {count:>9} cases in {took:6.0f} s  {status}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--seconds", type=int, default=0, help="time budget per target")
    parser.add_argument("--runs", type=int, default=0, help="stop a target after N cases")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _child(args.one, args.seconds, args.runs)
        return 0
    if not args.seconds and not args.runs:
        parser.error("give --seconds or --runs (a fuzz run needs a bound)")
    return _parent(args.targets, args.seconds, args.runs)


if __name__ == "__main__":
    sys.exit(main())
