"""Tests for gwcore.contract.addon_lifecycle: addons get load(ctx), configure(updated) and done(),
one instance per site per load, and metric families of their own on the gateway's
registry."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gwcore.contract.plugin_host import PluginLoadError
from gwcore.testing import connection_closed, load_stack

PER_DESTINATION = """
from prometheus_client import Counter

log = []


class PerDestination:
    name = "per_destination"

    def load(self, ctx):
        self.ctx = ctx
        self.tag = ctx.section.get("tag", "none")
        self.closed = ctx.family(
            Counter, "per_destination_closed", "Closed, per destination.", ["site", "destination"]
        )
        log.append(("load", ctx.site.name, ctx.name, ctx.section_name))

    def configure(self, updated):
        log.append(("configure", sorted(updated)))

    def tgw_connection_closed(self, event):
        self.closed.labels(site=event.conn.site, destination=event.record["destination"]).inc()

    def done(self):
        log.append(("done", self.tag))


addons = [PerDestination]
"""

FAILS_TO_LOAD = """
class Broken:
    def load(self, ctx):
        raise RuntimeError("no database")


addons = [Broken]
"""


def write(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_an_addon_is_loaded_configured_and_done_with_its_own_section(tmp_path: Path) -> None:
    """load(ctx) gets the site, its own section (named after the file, although the stack
    lists it by path), a logger and metrics; configure gets the section's keys; done()
    runs when the site stops. Its family counts into the gateway's registry."""
    plugin = write(tmp_path, "per_destination", PER_DESTINATION)
    loaded = load_stack(tmp_path, [plugin], {"per_destination": {"tag": "blue"}})
    addon = loaded.stack.pm.get_plugin("per_destination[0:per_destination]")
    module_log = __import__("sys").modules[type(addon).__module__].log
    assert module_log == [
        ("load", "main", "per_destination[0:per_destination]", "per_destination"),
        ("configure", ["tag"]),
    ]
    loaded.dispatch(connection_closed({"destination": "billing"}))
    assert loaded.metric("per_destination_closed_total", destination="billing") == 1
    loaded.done()
    assert module_log[-1] == ("done", "blue")


def test_one_instance_per_site_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An addon listed as a class is instantiated by each stack: two loads (two sites, or
    a reload) of one imported module (listed by module path, configured by its last
    component) never share an instance or its state."""
    package = tmp_path / "lib" / "tgwtest_lifecycle"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write(package, "per_destination", PER_DESTINATION)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    entry = "tgwtest_lifecycle.per_destination"
    first = load_stack(tmp_path, [entry], {"per_destination": {"tag": "a"}})
    second = load_stack(tmp_path, [entry], {"per_destination": {"tag": "b"}})
    name = "per_destination[0:per_destination]"
    one, two = first.stack.pm.get_plugin(name), second.stack.pm.get_plugin(name)
    assert type(one) is type(two), "one module, imported once"
    assert one is not two
    assert (one.tag, two.tag) == ("a", "b")


def test_an_addon_that_fails_to_load_refuses_the_start_by_name(tmp_path: Path) -> None:
    plugin = write(tmp_path, "broken", FAILS_TO_LOAD)
    with pytest.raises(PluginLoadError, match=r"addon 'broken\[0:Broken\]' raised in load"):
        load_stack(tmp_path, [plugin])
