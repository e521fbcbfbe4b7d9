"""Tests for gwcore.contract.plugin_host: resolving stack entries, registering addons, and calling
hooks in stack order with failing addons isolated."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from twisted.logger import Logger

from gwcore.contract.events import ClientConnected, ConnectionInfo
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.plugin_host import (
    DEFAULT_PLUGINS,
    ESSENTIAL_PLUGINS,
    PluginLoadError,
    PluginStack,
    resolve_plugin,
)
from gwcore.policy.config import GatewayConfig, parse_config
from gwcore.runtime.config_check import check_config
from gwcore.testing import TRUST_DOMAIN, FakeSite

HOOK = "tgw_client_connected"

# A drop-in that notes its own name on the event and provides one upstream strategy
# named after itself, so both event and provider ordering are observable.
RECORDER = """
from pathlib import Path

NAME = Path(__file__).stem


def tgw_client_connected(event):
    event.conn.annotations.setdefault("seen", []).append(NAME)


class Strategy:
    name = NAME

    def applies_to(self, destination):
        return True

    def connect(self, destination, endpoint, factory, timeout):
        raise AssertionError("only the order of strategies is tested; nothing is dialled")


def tgw_upstream_strategies(site):
    return [Strategy()]
"""

VETO = """
from pathlib import Path

NAME = Path(__file__).stem


def tgw_client_connected(event):
    event.conn.annotations.setdefault("seen", []).append(NAME)
    event.veto(NAME + " says no")
"""

VETO_THEN_RAISE = """
def tgw_client_connected(event):
    event.veto("half-way through")
    raise RuntimeError("addon bug")
"""

ADDONS = """
class Recorder:
    def __init__(self, name):
        self.name = name

    def tgw_client_connected(self, event):
        event.conn.annotations.setdefault("seen", []).append(self.name)

    def not_a_hook(self, event):
        event.conn.annotations.setdefault("seen", []).append("not_a_hook")


addons = [Recorder("first"), Recorder("second")]
"""

MISSPELLED = """
def tgw_client_conected(event):
    pass
"""

WRONG_ARGUMENT = """
def tgw_client_connected(evt):
    pass
"""

RAISES_ON_IMPORT = """
raise RuntimeError("boom at import time")
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def gateway(
    base: Path, plugins: list[str], *, plugin_paths: tuple[str, ...] = ("addons",)
) -> GatewayConfig:
    """A parsed config with one site, ``main``, whose stack is ``plugins``."""
    data = {
        "gateway": {"plugin_paths": list(plugin_paths)},
        "sites": {
            "main": {
                "listen": "tcp:0:interface=127.0.0.1",
                "name": "legacy-gw",
                "trust_domain": TRUST_DOMAIN,
                "plugins": plugins,
            }
        },
    }
    return parse_config(data, str(base / "tgw.toml"), base)


def stack(base: Path, plugins: list[str], **kw: Any) -> PluginStack:
    config = gateway(base, plugins, **kw)
    return PluginStack(config.site("main"), config)


def connected() -> ClientConnected:
    return ClientConnected(conn=ConnectionInfo("main", 1, "127.0.0.1", 50000, 0.0))


def dispatch(plugins: PluginStack, event: Any, metrics: GatewayMetrics | None = None) -> list:
    """Dispatch ``tgw_client_connected`` and return the log events it emitted."""
    logged: list[dict] = []
    plugins.dispatch(HOOK, event, Logger(observer=logged.append), metrics)
    return logged


# --- resolving names ------------------------------------------------------------------


@pytest.mark.parametrize("name", [*DEFAULT_PLUGINS, *ESSENTIAL_PLUGINS])
def test_builtin_names_resolve_to_their_modules(tmp_path: Path, name: str) -> None:
    """Built-ins come through the same door as everything else, by name."""
    module = {**DEFAULT_PLUGINS, **ESSENTIAL_PLUGINS}[name]
    assert resolve_plugin(name, gateway(tmp_path, [])) is importlib.import_module(module)


def test_unknown_name_names_itself_the_builtins_and_the_searched_paths(tmp_path: Path) -> None:
    """The error says what was asked for and everywhere it was looked for."""
    config = gateway(tmp_path, [], plugin_paths=("addons", "more"))
    with pytest.raises(PluginLoadError) as raised:
        resolve_plugin("no_such_plugin", config)
    message = str(raised.value)
    assert "'no_such_plugin'" in message
    for builtin in DEFAULT_PLUGINS:
        assert builtin in message
    assert str(tmp_path / "addons") in message and str(tmp_path / "more") in message


def test_unknown_name_without_plugin_paths_says_none_were_configured(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="plugin_paths configured"):
        resolve_plugin("no_such_plugin", gateway(tmp_path, [], plugin_paths=()))


def test_missing_dropin_path_is_reported_with_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match="does not exist") as raised:
        resolve_plugin("extra/missing.py", gateway(tmp_path, []))
    assert str(tmp_path / "extra" / "missing.py") in str(raised.value)


# --- drop-in files --------------------------------------------------------------------


def test_dropin_addons_list_registers_each_object_in_list_order(tmp_path: Path) -> None:
    """``addons = [...]`` registers every object; only ``tgw_*`` methods are hooks."""
    write(tmp_path / "addons" / "pair.py", ADDONS)
    plugins = stack(tmp_path, ["pair"])
    assert plugins.plugin_names[:2] == ["pair[0:first]", "pair[1:second]"]
    event = connected()
    dispatch(plugins, event)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["first", "second"]


def test_dropin_module_without_addons_registers_itself(tmp_path: Path) -> None:
    """A module with plain ``tgw_*`` functions (no marker, no imports) is the plugin."""
    write(tmp_path / "addons" / "recorder.py", RECORDER)
    plugins = stack(tmp_path, ["recorder"])
    assert plugins.plugin_names == ["recorder", *ESSENTIAL_PLUGINS]
    assert [i.plugin_name for i in plugins.listeners(HOOK)] == ["recorder"]


def test_dropin_by_py_path_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    write(tmp_path / "extra" / "recorder.py", RECORDER)
    plugins = stack(tmp_path, ["extra/recorder.py"], plugin_paths=())
    event = connected()
    dispatch(plugins, event)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["recorder"]


def test_misspelled_hook_fails_at_load_naming_it(tmp_path: Path) -> None:
    """A typo must not silently disable an addon: pluggy's check_pending catches it."""
    write(tmp_path / "addons" / "typo.py", MISSPELLED)
    with pytest.raises(PluginLoadError, match="tgw_client_conected") as raised:
        stack(tmp_path, ["typo"])
    assert isinstance(raised.value.__cause__, pluggy.PluginValidationError)


def test_implementation_asking_for_an_unknown_argument_fails_at_load(tmp_path: Path) -> None:
    write(tmp_path / "addons" / "wrongarg.py", WRONG_ARGUMENT)
    with pytest.raises(PluginLoadError, match="'wrongarg'") as raised:
        stack(tmp_path, ["wrongarg"])
    assert "evt" in str(raised.value)


def config_file(base: Path, plugins: list[str]) -> Path:
    text = f"""
    [gateway]
    admin = ""
    access_log = ""
    plugin_paths = ["addons"]

    [sites.edge]
    listen = "tcp:0:interface=127.0.0.1"
    name = "legacy-gw"
    trust_domain = "{TRUST_DOMAIN}"
    plugins = {plugins!r}
    """
    return write(base / "tgw.toml", text)


def test_check_config_reports_a_misspelled_hook_under_the_sites_plugins_key(
    tmp_path: Path,
) -> None:
    write(tmp_path / "addons" / "typo.py", MISSPELLED)
    checked = check_config(config_file(tmp_path, ["typo"]))
    assert not checked.ok
    [problem] = checked.problems
    assert problem.key == "sites.edge.plugins"
    assert problem.file == str(tmp_path / "tgw.toml")
    assert "tgw_client_conected" in problem.message


def test_check_config_reports_a_dropin_that_raises_on_import(tmp_path: Path) -> None:
    write(tmp_path / "addons" / "broken.py", RAISES_ON_IMPORT)
    checked = check_config(config_file(tmp_path, ["broken"]))
    [problem] = checked.problems
    assert problem.key == "sites.edge.plugins"
    assert "RuntimeError: boom at import time" in problem.message
    assert str(tmp_path / "addons" / "broken.py") in problem.message


# --- installed entry points -----------------------------------------------------------

ENTRY_MODULE = "fakeplug_mod"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution ``fakeplug`` on sys.path declaring ``[tgw] fakeplug = fakeplug_mod``."""
    site_packages = tmp_path / "site-packages"
    info = site_packages / "fakeplug-1.0.dist-info"
    write(info / "METADATA", "Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    write(info / "entry_points.txt", f"[tgw]\nfakeplug = {ENTRY_MODULE}\n")
    write(site_packages / f"{ENTRY_MODULE}.py", RECORDER.replace("Path(__file__).stem", '"ep"'))
    monkeypatch.delitem(sys.modules, ENTRY_MODULE, raising=False)
    monkeypatch.syspath_prepend(str(site_packages))
    yield site_packages
    sys.modules.pop(ENTRY_MODULE, None)


def test_installed_entry_point_is_loaded_when_a_stack_names_it(
    tmp_path: Path, installed: Path
) -> None:
    plugins = stack(tmp_path, ["fakeplug"])
    assert ENTRY_MODULE in sys.modules
    event = connected()
    dispatch(plugins, event)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["ep"]
    site = FakeSite(plugins.site, tmp_path / "state")
    names = [s.name for s in plugins.collect("tgw_upstream_strategies", site=site)]
    assert names[0] == "ep" and names[-1] == "plain"


def test_installed_entry_point_is_not_imported_by_a_stack_that_does_not_name_it(
    tmp_path: Path, installed: Path
) -> None:
    """Nothing is imported unless named, even while other names are being resolved."""
    write(tmp_path / "addons" / "recorder.py", RECORDER)
    stack(tmp_path, ["intentions", "recorder"])
    assert ENTRY_MODULE not in sys.modules


def test_installed_entry_point_wins_over_a_dropin_of_the_same_name(
    tmp_path: Path, installed: Path
) -> None:
    write(tmp_path / "addons" / "fakeplug.py", RECORDER)
    event = connected()
    dispatch(stack(tmp_path, ["fakeplug"]), event)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["ep"]


# --- calling hooks --------------------------------------------------------------------


@pytest.mark.parametrize("order", [["one", "two"], ["two", "one"]])
def test_collect_returns_providers_in_stack_order_with_plain_upstream_last(
    tmp_path: Path, order: list[str]
) -> None:
    """Not pluggy's LIFO order: the first plugin in the stack comes first; the essential
    plugins follow, the plain-TCP fallback last of all."""
    for name in ("one", "two"):
        write(tmp_path / "addons" / f"{name}.py", RECORDER)
    plugins = stack(tmp_path, order)
    site = FakeSite(plugins.site, tmp_path / "state")
    found = plugins.collect("tgw_upstream_strategies", site=site)
    names = [s.name for s in found]
    assert names[: len(order)] == order
    assert names[-1] == "plain" and not set(order) & set(names[len(order) :])
    assert plugins.plugin_names == [*order, *ESSENTIAL_PLUGINS]
    assert plugins.plugin_names[-1] == "plain_upstream"


@pytest.mark.parametrize("order", [["one", "two", "three"], ["three", "one", "two"]])
def test_dispatch_calls_event_hooks_in_stack_order(tmp_path: Path, order: list[str]) -> None:
    for name in order:
        write(tmp_path / "addons" / f"{name}.py", RECORDER)
    event = connected()
    dispatch(stack(tmp_path, order), event)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == order


def test_raising_addon_is_logged_counted_and_the_others_still_run(tmp_path: Path) -> None:
    """Its veto made before raising is discarded; the next addon's veto then counts."""
    write(tmp_path / "addons" / "raiser.py", VETO_THEN_RAISE)
    write(tmp_path / "addons" / "after.py", VETO)
    plugins = stack(tmp_path, ["raiser", "after"])
    metrics = GatewayMetrics()
    event = connected()
    logged = dispatch(plugins, event, metrics)
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["after"]
    assert (event.vetoed_by, event.veto_reason) == ("after", "after says no")
    [failure] = logged
    assert failure["addon"] == "raiser" and failure["hook"] == HOOK
    assert failure["log_failure"].check(RuntimeError)
    labels = {"site": "main", "hook": HOOK}
    assert metrics.registry.get_sample_value("tgw_addon_errors_total", labels) == 1


def test_raising_addons_veto_is_discarded_even_when_nobody_else_vetoes(tmp_path: Path) -> None:
    write(tmp_path / "addons" / "raiser.py", VETO_THEN_RAISE)
    event = connected()
    dispatch(stack(tmp_path, ["raiser"]), event, metrics=None)
    assert (event.vetoed_by, event.veto_reason) == (None, None)


def test_first_veto_wins_and_names_the_vetoing_plugin(tmp_path: Path) -> None:
    write(tmp_path / "addons" / "a.py", VETO)
    write(tmp_path / "addons" / "b.py", VETO)
    event = connected()
    dispatch(stack(tmp_path, ["b", "a"]), event)
    assert (event.vetoed_by, event.veto_reason) == ("b", "b says no")
    assert event.conn is not None
    assert event.conn.annotations["seen"] == ["b", "a"], "later addons still observe"


def test_listeners_is_empty_when_no_plugin_implements_a_hook(tmp_path: Path) -> None:
    """Sites skip building payloads for hooks nobody listens to."""
    plugins = stack(tmp_path, ["intentions"])
    assert plugins.listeners(HOOK) == ()


def test_two_sites_have_independent_stacks(tmp_path: Path) -> None:
    """A drop-in in site a's stack is neither called nor collected for site b."""
    write(tmp_path / "addons" / "recorder.py", RECORDER)
    site_table = {
        "listen": "tcp:8443:interface=127.0.0.1",
        "name": "legacy-gw",
        "trust_domain": TRUST_DOMAIN,
    }
    data = {
        "gateway": {"plugin_paths": ["addons"]},
        "sites": {
            "a": {**site_table, "plugins": ["recorder"]},
            "b": {**site_table, "listen": "tcp:8444:interface=127.0.0.1", "plugins": []},
        },
    }
    config = parse_config(data, str(tmp_path / "tgw.toml"), tmp_path)
    a = PluginStack(config.site("a"), config)
    b = PluginStack(config.site("b"), config)

    event = connected()
    dispatch(b, event)
    assert event.conn is not None
    assert "seen" not in event.conn.annotations
    dispatch(a, event)
    assert event.conn.annotations["seen"] == ["recorder"]

    site_b = FakeSite(config.site("b"), tmp_path / "state")
    assert "recorder" not in [s.name for s in b.collect("tgw_upstream_strategies", site=site_b)]
    assert b.plugin_names == list(ESSENTIAL_PLUGINS)
