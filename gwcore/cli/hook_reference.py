"""Generate ``docs/hook-reference.md`` from :mod:`gwcore.contract.hookspecs`.

    python -m gwcore.cli.hook_reference > docs/hook-reference.md

The hook specifications are the contract; this page is their docstrings, grouped by
phase, with each hook's signature. ``tests/cli/test_hook_reference.py`` fails when the page
is out of date, when a hook has no docstring, when ``docs/hooks.md`` does not explain a
hook, or when no test exercises it (datasette's habit).
"""

from __future__ import annotations

import inspect
import sys
import textwrap

from gwcore.contract import hookspecs

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Configuration hooks", hookspecs.CONFIG_HOOKS),
    ("Provider hooks", hookspecs.PROVIDER_HOOKS),
    ("Event hooks", tuple(h for h in hookspecs.EVENT_HOOKS if h not in hookspecs.HTTP_HOOKS)),
    ("HTTP addon hooks", hookspecs.HTTP_HOOKS),
)


def all_hooks() -> list[str]:
    """Every hook specification in :mod:`gwcore.contract.hookspecs`, by name."""
    return sorted(n for n in vars(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))


def signature(name: str) -> str:
    function = getattr(hookspecs, name)
    params = ", ".join(
        f"{p.name}: {p.annotation}" for p in inspect.signature(function).parameters.values()
    )
    return f"{name}({params}) -> {inspect.signature(function).return_annotation}"


def generate() -> str:
    """The whole page. Raises ``ValueError`` for a hook without a docstring or group."""
    grouped = {h for _, hooks in GROUPS for h in hooks}
    missing = sorted(set(all_hooks()) - grouped)
    if missing:
        raise ValueError(f"hooks in no group of gwcore.cli.hook_reference.GROUPS: {missing}")
    out = [
        "# Hook reference",
        "",
        "<!-- Generated from gwcore/contract/hookspecs.py by",
        "`python -m gwcore.cli.hook_reference > docs/hook-reference.md`;",
        "do not edit (tests/cli/test_hook_reference.py checks it). -->",
        "",
        "Every hook a plugin may implement, with its specification's docstring. How to write",
        "plugins, payload fields and examples: [hooks.md](hooks.md).",
    ]
    for title, hooks in GROUPS:
        out += ["", f"## {title}"]
        for name in hooks:
            doc = inspect.getdoc(getattr(hookspecs, name))
            if not doc:
                raise ValueError(f"hook {name} has no docstring in gwcore/contract/hookspecs.py")
            out += ["", f"### `{name}`", "", "```python", signature(name), "```", ""]
            out += [textwrap.dedent(doc)]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generate())
