"""What a real Site does with its plugins outside any connection: ``tgw_routes_changed``
(at start, before ``tgw_site_started``, then after each catalog rebuild) and
``tgw_site_started``; addons' ``load(ctx)`` before listening and ``done()`` at stop; a
provider of the wrong shape refusing the start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from gwcore.contract.plugin_host import PluginLoadError
from tests.runtime.test_site import BILLING, destination, result_of, snapshot, started

EVENTS = """
seen = []


def tgw_routes_changed(event):
    seen.append(("tgw_routes_changed", event.site, event.routes, event.version))


def tgw_site_started(event):
    seen.append(("tgw_site_started", event.site, event.address))
"""


def test_hook_routes_changed_and_site_started_fire_in_documented_order(tmp_path: Path) -> None:
    """At start the first route table is announced, then the site start (with its
    address); a rebuild with a new destination announces the new routes again."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "events.py").write_text(EVENTS)
    site = started(tmp_path, ["fake", "events"], {"fake": {"sources": ["src"], "certs": True}})
    seen = site.stack.pm.get_plugin("events").seen
    [(first, key, routes, _), (second, key2, address)] = seen
    assert (first, key, routes) == ("tgw_routes_changed", "main", ())
    assert (second, key2) == ("tgw_site_started", "main")
    host, port = site.listening_address()
    assert address == f"{host}:{port}"
    [source] = site.sources
    source.publish(snapshot("src", "7", destination(BILLING, "10.0.0.1")))
    site.reactor.advance(0)
    hook, _, routes, version = seen[-1]
    assert hook == "tgw_routes_changed" and len(seen) == 3
    assert len(routes) == 1 and routes[0].startswith("billing.")
    assert version


LIFECYCLE = """
calls = []


class Watcher:
    name = "watcher"

    def load(self, ctx):
        calls.append(("load", ctx.site.name, ctx.site.listening))
        self.site = ctx.site

    def done(self):
        calls.append(("done", self.site.name, self.site.listening))


addons = [Watcher]
"""


def test_a_site_loads_its_addons_before_listening_and_ends_them_when_it_stops(
    tmp_path: Path,
) -> None:
    """A real Site calls load(ctx) (with itself as ctx.site) before it listens, and done()
    once when it stops, after it stopped listening."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "watcher.py").write_text(LIFECYCLE)
    site = started(tmp_path, ["fake", "watcher"], {"fake": {"certs": True}})
    addon = site.stack.pm.get_plugin("watcher[0:watcher]")
    calls = sys.modules[type(addon).__module__].calls
    assert calls == [("load", "main", False)]
    assert addon.site is site
    result_of(Deferred.fromCoroutine(site.stop(0)))
    assert calls == [("load", "main", False), ("done", "main", False)]


NO_HEALTH = """
class Source:
    name = "nohealth"

    def start(self, publish):
        return None

    def stop(self):
        return None


def tgw_catalog_sources(site):
    return [Source()]
"""


def test_a_site_with_a_source_without_health_refuses_to_start(tmp_path: Path) -> None:
    """A real Site's start fails before anything starts or listens, naming the plugin
    and the missing member (before, it started and /ready later answered 500)."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "nohealth.py").write_text(NO_HEALTH)
    with pytest.raises(PluginLoadError) as raised:
        started(tmp_path, ["fake", "nohealth"], {"fake": {"certs": True}})
    assert "plugin 'nohealth': tgw_catalog_sources()[0] (Source) has no health()" in str(
        raised.value
    )
