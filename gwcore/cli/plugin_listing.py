"""What ``tgw plugins`` shows: the installed plugins, where each comes from, the hooks
each implements, and (with a config) each site's stack in load order.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gwcore.contract import hookspecs
from gwcore.contract.plugin_names import ENTRY_POINT_GROUP


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin: its stack name, origin, and the hooks it implements."""

    name: str
    origin: str
    """``built-in``, ``essential``, ``entry point VALUE (DISTRIBUTION)``, ``drop-in PATH``."""
    hooks: tuple[str, ...]
    error: str = ""


def hooks_of(plugin: object) -> tuple[str, ...]:
    """The hooks a plugin (or each of its ``addons``) implements, in hookspec order."""
    addons = getattr(plugin, "addons", None)
    objects = list(addons) if isinstance(addons, list | tuple) else [plugin]
    known = (*hookspecs.CONFIG_HOOKS, *hookspecs.PROVIDER_HOOKS, *hookspecs.EVENT_HOOKS)
    return tuple(h for h in known if any(callable(getattr(o, h, None)) for o in objects))


def installed_plugins(plugin_paths: Sequence[Path] = ()) -> list[PluginInfo]:
    """Every plugin a stack could name, in resolution order (see gwcore.plugin_host)."""
    from gwcore.contract.plugin_host import DEFAULT_PLUGINS, ESSENTIAL_PLUGINS, _load_dropin

    found: list[PluginInfo] = []

    def add(name: str, origin: str, load: object) -> None:
        try:
            plugin = load() if callable(load) else load
        except Exception as e:  # one broken plugin must not hide the others
            found.append(PluginInfo(name, origin, (), f"{type(e).__name__}: {e}"))
            return
        found.append(PluginInfo(name, origin, hooks_of(plugin)))

    for name, module in DEFAULT_PLUGINS.items():
        add(name, "built-in", lambda m=module: importlib.import_module(m))
    for name, module in ESSENTIAL_PLUGINS.items():
        add(name, "essential", lambda m=module: importlib.import_module(m))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        add(ep.name, f"entry point {ep.value} ({dist})", ep.load)
    for directory in plugin_paths:
        if directory.is_dir():
            for path in sorted(directory.glob("*.py")):
                add(path.stem, f"drop-in {path}", lambda p=path: _load_dropin(p))
    return found


def format_listing(plugins: Sequence[PluginInfo]) -> list[str]:
    """One line per plugin: ``name  origin  hooks`` (a plugin shadowed by an earlier one
    of the same name is marked: a stack entry resolves to the first)."""
    width = max((len(p.name) for p in plugins), default=0)
    lines, seen = [], set()
    for p in plugins:
        shadowed = " (shadowed: an earlier plugin has this name)" if p.name in seen else ""
        seen.add(p.name)
        detail = f"error: {p.error}" if p.error else ", ".join(p.hooks) or "(no hooks)"
        lines.append(f"{p.name:<{width}}  {p.origin}{shadowed}: {detail}")
    return lines


def stack_listing(config_file: str) -> tuple[list[str], list[Path], list[str]]:
    """Each site's stack in load order (one line per registered plugin, with its hooks),
    the config's ``plugin_paths``, and the config's problems (as ``check-config``)."""
    from gwcore.runtime.config_check import check_config

    checked = check_config(config_file)
    if checked.config is None:
        return [], [], [str(p) for p in checked.problems]
    lines = []
    for site in checked.config.sites:
        stack = checked.stacks.get(site.key)
        if stack is None:
            continue
        lines.append(f"site {site.key}:")
        for position, name in enumerate(stack.plugin_names, 1):
            hooks = hooks_of(stack.pm.get_plugin(name))
            lines.append(f"  {position}. {name}: {', '.join(hooks) or '(no hooks)'}")
    paths = list(checked.config.plugin_paths)
    return lines, paths, [str(p) for p in checked.problems]
