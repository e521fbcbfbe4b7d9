"""The shape of the tree holds: imports only point down the layers, no import circles, and no
source file (tests aside) over 600 lines.

Layers, lowest first (docs/architecture.md draws them):
policy (sans-IO) → contract (hookspecs, providers, events, plugin host, metrics, pki)
→ net (Twisted driver) → plugins → runtime → cli / testing.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600

LAYERS: dict[str, int] = {
    "gwcore": 0,  # the package root: __version__ and the moved-path aliases only
    "gwcore.policy": 1,
    "gwcore.contract": 2,
    "gwcore.net": 3,
    "gwcore.plugins": 4,
    "gwcore.runtime": 5,
    "gwcore.cli": 6,
    "gwcore.testing": 6,
}
"""Room → rank; a module may import from its own room or a lower rank, never higher."""

SKIP_DIRS = {".venv", ".git", "var", "build", "dist", "tests", "node_modules", "__pycache__"}


def source_modules() -> dict[str, Path]:
    """Dotted module name → file, for gwcore/ and plugins/ (shipped as gwcore.plugins)."""
    modules: dict[str, Path] = {}
    for base, package in ((ROOT / "gwcore", "gwcore"), (ROOT / "plugins", "gwcore.plugins")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def room(module: str) -> str:
    """The longest LAYERS key that is ``module`` or a package holding it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in LAYERS:
            return candidate
    raise AssertionError(f"{module} is in no room of LAYERS")


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(imported gwcore module, line, type-only) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    type_only_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.body:
                for inner in ast.walk(child):
                    if hasattr(inner, "lineno"):
                        type_only_lines.add(inner.lineno)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and target.startswith("gwcore"):
                yield target, node.lineno, node.lineno in type_only_lines


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = source_modules()
    known = set(modules)
    return {name: sorted(set(imports(name, path, known))) for name, path in modules.items()}


def test_imports_never_point_up_a_layer(graph: dict[str, list[tuple[str, int, bool]]]) -> None:
    """No module imports from a room ranked above its own (type-only imports included:
    a type annotation that names a higher layer is the same dependency)."""
    upward = [
        f"{module}:{line} imports {target}"
        for module, edges in graph.items()
        for target, line, _ in edges
        if LAYERS[room(target)] > LAYERS[room(module)]
    ]
    assert upward == []


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_circles(graph: dict[str, list[tuple[str, int, bool]]]) -> None:
    """The import graph has no cycle: function-level imports count, and so do imports
    under ``if TYPE_CHECKING`` (a type-only cycle is still two modules that know each
    other; the callee learns about its caller through a Protocol instead)."""
    edges = {
        module: {target for target, _, _ in found if target in graph}
        for module, found in graph.items()
    }
    assert find_cycles(edges) == []


def test_the_structure_check_sees_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above can fail: a planted upward import is found and ranked higher, and
    a planted circle (the old service <-> workers one) is found by the cycle search."""
    low = tmp_path / "low.py"
    low.write_text("def f():\n    from gwcore.runtime import site\n")
    found = list(imports("gwcore.policy.low", low, {"gwcore.runtime.site", "gwcore.policy.low"}))
    assert found == [("gwcore.runtime.site", 2, False)]
    assert LAYERS[room("gwcore.runtime.site")] > LAYERS[room("gwcore.policy.low")]
    circle = {"service": {"workers"}, "workers": {"service"}, "tap": {"service"}}
    assert find_cycles(circle) == [["service", "workers", "service"]]


def source_files() -> Iterator[Path]:
    for path in ROOT.rglob("*.py"):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts[:-1]):
            yield path


def test_no_source_file_is_over_600_lines() -> None:
    """Every Python source outside tests/ fits in 600 lines."""
    long = {
        str(path.relative_to(ROOT)): count
        for path in source_files()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_package_of_the_tree_ships_in_the_wheel() -> None:
    """Each folder of gwcore/ with an ``__init__.py`` is listed in pyproject's explicit
    ``[tool.setuptools] packages``: a new room left out would be missing once installed."""

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "gwcore").rglob("__init__.py")
    }
    assert found - listed == set()
