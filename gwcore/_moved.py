"""Old import paths kept for one release after the issue-20 reorganisation.

Each old module (``gwcore.site``, ``gwcore.hookspecs``...) calls :func:`alias`, which warns
once and puts the new module itself in ``sys.modules`` under the old name, so both names are
the same object: attributes, ``isinstance`` checks and monkeypatching behave identically.
"""

from __future__ import annotations

import importlib
import sys
import warnings

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


def alias(old: str, new: str) -> None:
    """Make the module being imported as *old* the module *new*, with a DeprecationWarning."""
    warnings.warn(
        f"{old} moved to {new}; the old path will be removed in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old] = importlib.import_module(new)
