"""The addon lifecycle (mitmproxy's ``load``/``configure``/``done``), per site and load.

An addon object (an item of a plugin's ``addons`` list) may define:

- ``load(ctx)``: once when its site starts, before any provider starts; ``ctx`` is an
  :class:`AddonContext` (the site's metrics, reactor, a logger, its own section).
  Raising refuses the site's start, naming the addon.
- ``configure(updated)``: right after ``load``, with the keys of its section; a
  reload that changes the site builds a new stack (a new instance when the addon is
  listed as a class) and calls ``load`` and ``configure`` again.
- ``done()``: once when its site stops (shutdown, or replaced on reload), after its
  connections are gone. Raising is logged.

One instance per site per load: list the **class** in ``addons`` (``addons =
[Counter]``) and each stack instantiates it; a listed instance is shared by every
site that names its plugin. Modules (``tgw_*`` functions) have no lifecycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger


@dataclass(frozen=True)
class AddonContext:
    """What ``load(ctx)`` receives."""

    name: str
    """The addon's registration name (``entry[index:label]``), as in ``vetoed_by``."""
    section_name: str
    """Its plugin's name: its config section is ``[sites.SITE.<section_name>]``."""
    site: Any
    """The site (a ``SiteContext``): ``name``, ``config``, ``catalog_view()``..."""
    section: Mapping[str, Any]
    """Its own config section (empty when absent)."""
    log: Logger
    """A logger in namespace ``tgw.addon.<section_name>``."""

    @property
    def metrics(self) -> Any:
        """The gateway's metrics (``GatewayMetrics``); prefer :meth:`family`."""
        return self.site.metrics

    @property
    def reactor(self) -> Any:
        return self.site.reactor

    def family(
        self, kind: type, name: str, documentation: str, labels: list[str], **kw: Any
    ) -> Any:
        """A metric family on the gateway's registry (shown by ``/metrics``), claimed
        for this plugin: another plugin registering the same name is refused."""
        return self.site.metrics.family(
            kind, name, documentation, labels, owner=self.section_name, **kw
        )


def lifecycle_objects(plugins: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """The registered objects (not modules) that define any lifecycle method."""
    import types

    return [
        (name, obj)
        for name, obj in plugins
        if not isinstance(obj, types.ModuleType)
        and any(callable(getattr(obj, m, None)) for m in ("load", "configure", "done"))
    ]
