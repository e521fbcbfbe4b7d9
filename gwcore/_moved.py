"""Old import paths kept for one release after the issue-20 reorganisation.

``gwcore/__init__.py`` installs :class:`MovedFinder`, so importing an old module name
(``gwcore.site``, ``gwcore.hookspecs``...) warns once with a ``DeprecationWarning`` and
gives the new module itself: ``sys.modules`` holds the same object under both names, so
attributes, ``isinstance`` checks and monkeypatching behave identically. No file stands
at the old paths; delete an entry here (and this module, once empty) to retire it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: Old dotted path → new dotted path; tests/test_moved_paths.py checks every entry.
MOVED: dict[str, str] = {
    "gwcore.hookspecs": "gwcore.contract.hookspecs",
    "gwcore.providers": "gwcore.contract.providers",
    "gwcore.events": "gwcore.contract.events",
    "gwcore.metrics": "gwcore.contract.metrics",
    "gwcore.pki": "gwcore.contract.pki",
    "gwcore.plugin_host": "gwcore.contract.plugin_host",
    "gwcore.site": "gwcore.runtime.site",
    "gwcore.mesh_site": "gwcore.runtime.mesh_site",
    "gwcore.recheck": "gwcore.runtime.recheck",
    "gwcore.service": "gwcore.runtime.service",
    "gwcore.workers": "gwcore.runtime.workers",
    "gwcore.tap": "gwcore.runtime.tap",
    "gwcore.validation": "gwcore.runtime.config_check",
    "gwcore.connect": "gwcore.cli.connect",
    "gwcore.testing_consul": "gwcore.testing.consul",
    "gwcore.testing_consul_ca": "gwcore.testing.consul_ca",
    "gwcore.testing_consul_state": "gwcore.testing.consul_state",
}


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names of :data:`MOVED` and loads each as its new module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a placeholder; exec_module swaps in the new module

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        new = MOVED[old]
        warnings.warn(
            f"{old} moved to {new}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system hands back whatever sys.modules holds once this returns.
        sys.modules[old] = importlib.import_module(new)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (gwcore/__init__.py calls this)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
