"""Meta-tests over the hook contract (datasette's habit): every hook in gwcore.hookspecs
has a docstring, is in the generated reference (which is up to date), is explained in
docs/hooks.md, and is exercised by at least one test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from gwcore.cli.hook_reference import all_hooks, generate
from gwcore.contract import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = all_hooks()
# Modules that name every hook generically; they do not test any one hook.
NOT_A_HOOK_TEST = {"test_hook_reference.py", "test_hookspecs.py", "test_testing_stack.py"}


def test_the_hook_list_is_complete() -> None:
    """The groups the docs are built from hold every hook specification, once."""
    grouped = [*hookspecs.CONFIG_HOOKS, *hookspecs.PROVIDER_HOOKS, *hookspecs.EVENT_HOOKS]
    assert sorted(grouped) == HOOKS


def test_the_generated_reference_is_up_to_date() -> None:
    """docs/hook-reference.md is exactly what ``python -m gwcore.cli.hook_reference`` writes."""
    assert (ROOT / "docs" / "hook-reference.md").read_text() == generate(), (
        "run: python -m gwcore.cli.hook_reference > docs/hook-reference.md"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    """A docstring in the specification, and an entry in docs/hooks.md."""
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
    assert f"`{hook}" in (ROOT / "docs" / "hooks.md").read_text(), f"{hook} not in hooks.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    """Some test module (not one that lists all hooks) names the hook."""
    modules = [
        p
        for p in (ROOT / "tests").rglob("test_*.py")
        if p.name not in NOT_A_HOOK_TEST and hook in p.read_text()
    ]
    assert modules, f"no test module exercises {hook}"
