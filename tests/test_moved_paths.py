"""Import paths that moved in the issue-20 reorganisation keep working for one release: each
old path imports, warns with a DeprecationWarning naming the new path, and is the very same
module (same objects) as the new one; nothing in the repository still uses an old path."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

import gwcore
from gwcore._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_path_imports_warns_and_is_the_new_module(
    old: str, new: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``import <old>`` warns once and hands back the new module object itself."""
    monkeypatch.delitem(sys.modules, old, raising=False)
    monkeypatch.delattr(gwcore, old.rpartition(".")[2], raising=False)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} moved to {new}")):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    assert module is target
    public = [name for name in vars(target) if not name.startswith("_")]
    assert public, f"{new} exposes nothing"
    for name in public:
        assert getattr(module, name) is getattr(target, name)


def test_no_file_stands_at_an_old_path_and_from_imports_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old names are served by the finder alone (no stale copy can drift), and the
    ``from gwcore import pki`` form plugin files use still works, with the warning."""
    for old in MOVED:
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists()
    monkeypatch.delitem(sys.modules, "gwcore.pki", raising=False)
    monkeypatch.delattr(gwcore, "pki", raising=False)
    with pytest.warns(DeprecationWarning, match="gwcore.pki moved to gwcore.contract.pki"):
        from gwcore import pki
    from gwcore.contract import pki as new_pki

    assert pki is new_pki


def test_nothing_in_the_repository_imports_an_old_path() -> None:
    """In-repo code and tests use the new paths, so only outside users see the warning."""
    old_names = "|".join(re.escape(name.split(".", 1)[1]) for name in MOVED)
    pattern = re.compile(
        rf"^\s*(from gwcore\.({old_names}) import|import gwcore\.({old_names})\b"
        rf"|from gwcore import .*\b({old_names})\b)",
        re.M,
    )
    users = []
    for top in ("gwcore", "plugins", "tests", "bench", "scripts", "twisted", "contrib"):
        for path in (ROOT / top).rglob("*.py"):
            if path == Path(__file__):
                continue
            if pattern.search(path.read_text()):
                users.append(str(path.relative_to(ROOT)))
    assert users == []


def test_gwcore_testing_and_gwcore_cli_keep_their_paths_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two old modules became the packages of their rooms: ``gwcore.testing`` still hands
    out the fakes and ``gwcore.cli:main`` (the console script) still resolves, silently."""
    import warnings

    for name in ("gwcore.testing", "gwcore.cli"):
        monkeypatch.delitem(sys.modules, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        testing = importlib.import_module("gwcore.testing")
        cli = importlib.import_module("gwcore.cli")
    from gwcore.cli.commands import build_parser, main
    from gwcore.testing.fakes import TRUST_DOMAIN, FakeSite, MeshCA, site_config

    assert (testing.FakeSite, testing.MeshCA, testing.site_config) == (
        FakeSite,
        MeshCA,
        site_config,
    )
    assert testing.TRUST_DOMAIN == TRUST_DOMAIN
    assert (cli.main, cli.build_parser) == (main, build_parser)
