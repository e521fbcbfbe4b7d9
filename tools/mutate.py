"""Mutation testing of tgw's decision path: does some test fail when a decision changes?

A small runner on the standard library's ``ast`` module (see docs/testing.md for why
not mutmut). For each function of a *target* (a source file, optionally limited to
some functions, with the test modules that should notice) it makes one mutant per
site of these operators:

- ``cmp``: a comparison negated (``==``/``!=``, ``<``/``>=``, ``<=``/``>``,
  ``in``/``not in``, ``is``/``is not``);
- ``bool``: ``and``/``or`` swapped;
- ``not``: a ``not`` removed;
- ``const``: ``True``/``False`` swapped;
- ``verdict``: ``ALLOW``/``DENY`` swapped (the names of :class:`Verdict` members);
- ``guard``: an ``if`` whose body ends the function early (``return``/``raise``) removed,
  as if the check had never been written.

Mutants are written into a private copy of the tree (a temporary directory made by
:func:`private_copy`, imported ahead of the editable install), never into the checkout,
so a test run, an editor or a commit in the checkout never sees mutated code. The
target's tests run there in a fresh ``pytest -x`` (no bytecode written, so no stale cache),
and the mutant is *killed* when they fail or time out, *survived* when they pass. A
survivor that is listed in ``EQUIVALENT`` with the reason it cannot change behaviour
is reported but does not fail the run; any other survivor does (exit status 1).

Usage (``make mutate`` runs the first)::

    python tools/mutate.py                       # every target, every mutant
    python tools/mutate.py --core --sample 40 --budget 150 --seed 7   # what CI runs
    python tools/mutate.py --list                # the mutants, without running them
    python tools/mutate.py --only gwcore/policy/sni.py

The checkout is only read: editing it while the tool runs changes nothing it tests.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT  # where tests run and mutants are written: a private copy once main() starts

_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "var", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "bench"
)


def private_copy(root: Path, into: Path) -> Path:
    """A copy of ``root`` at ``into``/tree that imports as ``gwcore`` ahead of the editable
    install (``plugins/`` is installed as ``gwcore.plugins``: a link gives the copy the
    same layout). :func:`check_copy` proves the copy is what the tests import."""
    tree = into / "tree"
    shutil.copytree(root, tree, ignore=_NOT_COPIED, symlinks=True)
    link = tree / "gwcore" / "plugins"
    if not link.exists():
        link.symlink_to(Path("..") / "plugins", target_is_directory=True)
    return tree


def _env(work: Path) -> dict[str, str]:
    path = [str(work), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
    }


def check_copy(work: Path) -> None:
    """Refuse to run when the tests would import the checkout instead of the copy (a
    mutant that is never imported would "survive" for nothing)."""
    probe = "import gwcore.policy, gwcore.plugins; print(gwcore.policy.__file__)"
    probe += "; print(gwcore.plugins.__path__[0])"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=work, env=_env(work), capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        raise SystemExit(f"tools/mutate.py: the copy does not import: {done.stderr.strip()}")
    for line in lines:
        if not Path(line).resolve().is_relative_to(work.resolve()):
            raise SystemExit(f"tools/mutate.py: tests would import {line}, not the copy {work}")


@dataclass(frozen=True)
class Target:
    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # qualified names; empty: every function
    core: bool = False  # the sans-IO policy core CI samples from


TARGETS: tuple[Target, ...] = (
    # The policy core (gwcore/policy/): identity, routing by SNI, authorization.
    Target(
        "gwcore/policy/spiffe.py",
        ("tests/policy/test_spiffe.py", "tests/policy/test_parsing_edges.py"),
        core=True,
    ),
    Target(
        "gwcore/policy/sni.py",
        ("tests/policy/test_sni.py", "tests/policy/test_parsing_edges.py"),
        core=True,
    ),
    Target("gwcore/policy/mesh.py", ("tests/policy/test_mesh.py",), core=True),
    Target(
        "gwcore/policy/intentions.py",
        ("tests/policy/test_intentions.py", "tests/policy/test_intentions_l7.py"),
        ("precedence", "_matches", "IntentionSet.decide", "_decision_for"),
        core=True,
    ),
    Target("gwcore/policy/decision.py", ("tests/policy/test_decision.py",), core=True),
    Target(
        "gwcore/policy/routes.py",
        ("tests/policy/test_routes.py",),
        ("merge_snapshots", "RouteTable.lookup"),
        core=True,
    ),
    # Decisions the Twisted driver takes itself: which certificate, whose identity.
    Target(
        "gwcore/net/terminator.py",
        ("tests/net/test_terminator_edges.py", "tests/net/test_terminator.py"),
        (
            "DownstreamProtocol.on_servername",
            "DownstreamProtocol.on_verify",
            "DownstreamProtocol._handshake_completed",
            "DownstreamProtocol._authorized",
        ),
    ),
    # Plugins' decisions: the intentions engine, the identity a mesh hop must present.
    Target(
        "plugins/intentions.py",
        (
            "tests/plugins/test_intentions_engine.py",
            "tests/plugins/test_file_catalog.py",
            "tests/runtime/test_site.py",
        ),
    ),
    # The identity an upstream (or, for tgw connect, the gateway) must present: checked
    # inside the handshake by gwcore.net.peer_verify with these rules.
    Target(
        "gwcore/net/upstream_tls.py",
        ("tests/cli/test_connect.py", "tests/net/test_upstream_tls.py"),
        ("Verification.check",),
    ),
)

EQUIVALENT: dict[str, str] = {
    # "<path>::<function>::<operator>: <before> -> <after>": "why no test can tell",
    "gwcore/policy/sni.py::normalize_sni::guard: if raw is None: ... -> "
    "(no `if raw is None` check)": "None is neither bytes nor str, so the final "
    "`else: return None` returns the same None",
    "gwcore/net/terminator.py::DownstreamProtocol._handshake_completed::guard: "
    "if destination is None: ... -> (no `if destination is None` check)": "unreachable: "
    "only a routed SNI swaps in a context with a certificate, so no handshake completes "
    "without a destination",
    "gwcore/net/terminator.py::DownstreamProtocol._handshake_completed::guard: "
    "if cert is None: ... -> (no `if cert is None` check)": "unreachable: the contexts "
    "verify with VERIFY_FAIL_IF_NO_PEER_CERT, so no handshake completes without a "
    "client certificate",
    "gwcore/net/terminator.py::DownstreamProtocol._handshake_completed::bool: "
    "self._deadline is not None and self._deadline.active() -> self._deadline is not None "
    "or self._deadline.active()": "the deadline is set in connectionMade and only cleared "
    "by its own expiry, which closes the connection first: here it is never None and "
    "still active, so both forms cancel it",
    "gwcore/net/terminator.py::DownstreamProtocol._authorized::guard: "
    "if self.state is State.CLOSED: ... -> (no `if self.state is State.CLOSED` check)": (
        "closing cancels the pending decision (SplicedClient._close), so _authorized never "
        "runs on a closed connection; test_early_data_is_paused_then_refused_beyond_the_"
        "limit answers late and checks nothing happened"
    ),
    "plugins/intentions.py::tgw_validate_site_config::guard: if NAME not in site.plugins: "
    "... -> (no `if NAME not in site.plugins` check)": "parse_config refuses a "
    "[sites.KEY.intentions] section in a site that does not name the plugin, so the "
    "reader has no keys and returns no problem either way",
}
"""Survivors that cannot change behaviour, each with the reason (docs/testing.md)."""


@dataclass
class Mutant:
    target: Target
    function: str
    operator: str
    before: str
    after: str
    line: int
    apply: Callable[[ast.Module], None] = field(repr=False)

    @property
    def key(self) -> str:
        return (
            f"{self.target.path}::{self.function}::{self.operator}: {self.before} -> {self.after}"
        )


NEGATED: dict[type, type] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
VERDICTS = {"ALLOW": "DENY", "DENY": "ALLOW"}


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Top-level functions and methods of top-level classes, by qualified name."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item


def _ends_early(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], ast.Return | ast.Raise)


def _sites(fn: ast.AST) -> Iterator[tuple[ast.AST, str, str, Callable[[ast.AST], None]]]:
    """(node, operator, replacement text, how to mutate the node in place) per site."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in NEGATED:
            new = NEGATED[type(node.ops[0])]

            def flip(n: ast.AST, new: type = new) -> None:
                n.ops[0] = new()  # type: ignore[attr-defined]

            probe = copy.deepcopy(node)
            flip(probe)
            yield node, "cmp", ast.unparse(probe), flip
        elif isinstance(node, ast.BoolOp):
            other = ast.Or if isinstance(node.op, ast.And) else ast.And

            def swap(n: ast.AST, other: type = other) -> None:
                n.op = other()  # type: ignore[attr-defined]

            probe = copy.deepcopy(node)
            swap(probe)
            yield node, "bool", ast.unparse(probe), swap
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):

            def drop_not(n: ast.AST) -> None:
                n.op = ast.UAdd()  # type: ignore[attr-defined]  # +x: x itself, truthiness kept
                n.operand = ast.Call(  # type: ignore[attr-defined]
                    ast.Name("bool", ast.Load()),
                    [n.operand],
                    [],  # type: ignore[attr-defined]
                )

            yield node, "not", ast.unparse(node.operand), drop_not
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):

            def negate(n: ast.AST) -> None:
                n.value = not n.value  # type: ignore[attr-defined]

            yield node, "const", repr(not node.value), negate
        elif isinstance(node, ast.Attribute) and node.attr in VERDICTS:

            def verdict(n: ast.AST) -> None:
                n.attr = VERDICTS[n.attr]  # type: ignore[attr-defined]

            yield node, "verdict", f"{ast.unparse(node.value)}.{VERDICTS[node.attr]}", verdict
        elif isinstance(node, ast.If) and _ends_early(node.body):

            def unguard(n: ast.AST) -> None:
                n.test = ast.Constant(False)  # type: ignore[attr-defined]

            yield node, "guard", f"(no `if {ast.unparse(node.test)}` check)", unguard


def mutants(target: Target) -> list[Mutant]:
    source = (ROOT / target.path).read_text()
    tree = ast.parse(source)
    found: list[Mutant] = []
    for name, fn in _functions(tree):
        if target.functions and name not in target.functions:
            continue
        for index, (node, operator, after, _how) in enumerate(_sites(fn)):
            before = ast.get_source_segment(source, node) or ast.unparse(node)
            if operator == "guard":
                before = f"if {ast.unparse(node.test)}: ..."  # type: ignore[attr-defined]

            def apply(module: ast.Module, name: str = name, index: int = index) -> None:
                fn = dict(_functions(module))[name]
                site = list(_sites(fn))[index]
                site[3](site[0])

            found.append(
                Mutant(target, name, operator, " ".join(before.split()), after, node.lineno, apply)
            )
    return found


def run_tests(target: Target, timeout: float) -> str:
    """``killed``, ``survived`` or ``error`` (no test ran) for what is on disk now."""
    env = _env(WORK)
    cmd = [
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
        "-p", "no:randomly", "-o", "addopts=--strict-markers", *target.tests,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=WORK, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "killed"  # a hang is a failing test (and pytest-timeout would say so)
    if done.returncode == 0:
        return "survived"
    if done.returncode in (4, 5):  # usage error, nothing collected
        return "error"
    return "killed"


class Restorer:
    """Puts the original text back, also when interrupted."""

    def __init__(self) -> None:
        self.saved: dict[Path, str] = {}

    def write(self, path: Path, text: str) -> None:
        self.saved.setdefault(path, path.read_text())
        path.write_text(text)

    def restore(self) -> None:
        for path, text in self.saved.items():
            path.write_text(text)
        self.saved.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/mutate.py", description=__doc__.split("\n")[0])
    parser.add_argument("--core", action="store_true", help="only the policy core targets")
    parser.add_argument("--only", action="append", default=[], help="only this target path")
    parser.add_argument("--sample", type=int, default=0, help="run N random mutants (0: all)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    parser.add_argument("--budget", type=float, default=0, help="stop starting mutants after S s")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per test run")
    parser.add_argument("--match", default="", help="only mutants whose key contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    targets = [t for t in TARGETS if (not args.core or t.core)]
    if args.only:
        targets = [t for t in targets if t.path in args.only]
    todo = [m for t in targets for m in mutants(t) if args.match in m.key]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    if args.sample and args.sample < len(todo):
        todo = sorted(random.Random(seed).sample(todo, args.sample), key=lambda m: m.key)
        print(f"sampled {len(todo)} mutants with --seed {seed}")
    if args.list:
        for m in todo:
            print(f"{m.target.path}:{m.line}: {m.key.split('::', 1)[1]}")
        print(f"{len(todo)} mutants")
        return 0

    global WORK
    scratch = tempfile.TemporaryDirectory(prefix="tgw-mutate-")
    WORK = private_copy(ROOT, Path(scratch.name))
    check_copy(WORK)
    restorer = Restorer()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    results: dict[str, list[Mutant]] = {"killed": [], "survived": [], "error": [], "skipped": []}
    try:
        for target in {m.target: None for m in todo}:  # only targets with mutants to run
            if run_tests(target, args.timeout) != "survived":
                print(f"{target.path}: its tests fail without any mutant; fix that first")
                return 2
        for number, m in enumerate(todo, 1):
            if args.budget and time.monotonic() - began > args.budget:
                results["skipped"].extend(todo[number - 1 :])
                break
            path = WORK / m.target.path
            original = path.read_text()
            module = ast.parse(original)
            m.apply(module)
            restorer.write(path, ast.unparse(module) + "\n")
            try:
                outcome = run_tests(m.target, args.timeout)
            finally:
                restorer.restore()
            results[outcome].append(m)
            mark = {"killed": ".", "survived": "S", "error": "E"}[outcome]
            print(mark, end="" if number % 60 else "\n", flush=True)
    finally:
        restorer.restore()
        signal.signal(signal.SIGTERM, previous)
        scratch.cleanup()
    print()
    unexplained = [m for m in results["survived"] if m.key not in EQUIVALENT]
    for m in results["survived"]:
        why = EQUIVALENT.get(m.key)
        label = f"equivalent: {why}" if why else "SURVIVED"
        print(f"{m.target.path}:{m.line}: {m.key.split('::', 1)[1]}  [{label}]")
    for m in results["error"]:
        print(f"{m.target.path}:{m.line}: {m.key.split('::', 1)[1]}  [ERROR: no test ran]")
    print(
        f"{len(results['killed'])} killed, {len(results['survived'])} survived "
        f"({len(unexplained)} unexplained), {len(results['error'])} errors, "
        f"{len(results['skipped'])} not run (budget) in {time.monotonic() - began:.0f}s"
        + (f"; seed {seed}" if args.sample else "")
    )
    return 1 if unexplained or results["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
