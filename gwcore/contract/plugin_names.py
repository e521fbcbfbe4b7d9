"""The names a site's stack entry can resolve to (entry points, drop-in files), and the
"did you mean" of an unknown entry (:func:`closest_name`); ``tgw plugins`` lists them
(gwcore.cli.plugin_listing)."""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

ENTRY_POINT_GROUP = "tgw"


def entry_point_names() -> list[str]:
    return [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def dropin_names(plugin_paths: Iterable[Path]) -> list[str]:
    return [p.stem for d in plugin_paths if d.is_dir() for p in sorted(d.glob("*.py"))]


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The installed name a misspelled stack entry most likely meant, if any is close."""
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return found[0] if found else None
