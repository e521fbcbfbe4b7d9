"""Tests for gwcore.contract.plugin_checks: provider shapes checked when a stack loads, async event
hooks refused, and one plugin loaded twice refused, each naming the plugin."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from gwcore.cli import main as tgw_main
from gwcore.contract.plugin_checks import EngineAnswerError, engine_answer
from gwcore.contract.plugin_host import PluginLoadError
from gwcore.policy.model import Decision, Verdict
from gwcore.testing import authz_request, client_connected, clienthello_seen, load_stack

SOURCE_WITHOUT_HEALTH = """
class Source:
    name = "nohealth"

    def start(self, publish):
        return None

    def stop(self):
        return None


def tgw_catalog_sources(site):
    return [Source()]
"""

ONE_OBJECT_NOT_A_LIST = """
class Engine:
    name = "single"
    policy_version = "1"

    def start(self, changed):
        return None

    def stop(self):
        return None

    def authorize(self, request):
        return None


def tgw_authorization_engines(site):
    return Engine()
"""

ENGINE_WITHOUT_VERSION = """
class Engine:
    name = "noversion"

    def start(self, changed):
        return None

    def stop(self):
        return None

    def authorize(self, request):
        return None


def tgw_authorization_engines(site):
    return [Engine()]
"""

ASYNC_EVENT_HOOK = """
async def tgw_client_connected(event):
    event.veto("never runs")
"""

ASYNC_PROVIDER_HOOK = """
async def tgw_upstream_strategies(site):
    return []
"""

COUNTER = """
name = "counter"


def tgw_connection_closed(event):
    pass
"""


def dropin(tmp_path: Path, name: str, source: str) -> str:
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / f"{name}.py").write_text(textwrap.dedent(source))
    return name


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            SOURCE_WITHOUT_HEALTH,
            "plugin 'bad': tgw_catalog_sources()[0] (Source) has no health(), "
            "required by CatalogSource",
        ),
        (
            ONE_OBJECT_NOT_A_LIST,
            "plugin 'bad': tgw_authorization_engines returned Engine, "
            "not a list of AuthorizationEngine objects",
        ),
        (
            ENGINE_WITHOUT_VERSION,
            "plugin 'bad': tgw_authorization_engines()[0] (Engine) has no 'policy_version'",
        ),
        (ASYNC_PROVIDER_HOOK, "plugin 'bad': tgw_upstream_strategies is 'async def'"),
        (ASYNC_EVENT_HOOK, "plugin 'bad': tgw_client_connected is 'async def'"),
    ],
)
def test_a_bad_provider_or_hook_refuses_the_stack_naming_plugin_and_member(
    tmp_path: Path, source: str, message: str
) -> None:
    """A provider missing a protocol member, a provider hook returning one object instead of
    a list, an ``async def`` provider or event hook: loading refuses, naming the plugin and
    what is wrong (before, the first was accepted and made /ready answer 500, the second a
    TypeError naming nobody, the last silently never ran)."""
    dropin(tmp_path, "bad", source)
    with pytest.raises(PluginLoadError) as raised:
        load_stack(tmp_path, ["bad"], plugin_paths=["addons"])
    assert message in str(raised.value)


def test_one_plugin_listed_twice_is_refused(tmp_path: Path) -> None:
    """An addon reached both by name and by its file path (as an entry point and its
    drop-in copy would be) would run twice and double-count: the second is refused."""
    dropin(tmp_path, "counter", COUNTER)
    with pytest.raises(PluginLoadError) as raised:
        load_stack(tmp_path, ["counter", "addons/counter.py"], plugin_paths=["addons"])
    assert "plugin 'counter' is loaded twice: by stack entry 'counter' and by " in str(raised.value)


def test_a_plugin_listed_by_path_is_configured_by_its_own_name(tmp_path: Path) -> None:
    """A plugin named by a path (or a module path) gets a section named like the file
    (before: "is a plugin section, but the plugin is not in this site's plugins list")
    and registers under that name."""
    dropin(tmp_path, "counter", COUNTER)
    loaded = load_stack(tmp_path, ["addons/counter.py"], {"counter": {}})
    assert "counter" in loaded.stack.plugin_names


class _Engine:
    name = "odd"
    policy_version = "1"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def authorize(self, request: object) -> object:
        return self.answer


@pytest.mark.parametrize(("answer", "reason"), [(None, "none"), ("allow", "wrong_type")])
def test_an_answer_that_is_not_a_decision_raises_with_a_reason(answer: object, reason: str) -> None:
    """``None`` or another type from ``authorize`` is an error with the reason label."""
    with pytest.raises(EngineAnswerError) as raised:
        engine_answer(_Engine(answer), authz_request())
    assert raised.value.reason == reason
    assert "engine 'odd'" in str(raised.value)


def test_a_deferred_firing_none_fails() -> None:
    """A Deferred that fires ``None`` fails with the ``none`` reason; one firing a
    Decision passes it through."""
    later: Deferred[object] = Deferred()
    failures: list[object] = []
    engine_answer(_Engine(later), authz_request()).addErrback(failures.append)
    later.callback(None)
    [failure] = failures
    assert failure.value.reason == "none"  # type: ignore[attr-defined]
    decision = Decision(Verdict.ALLOW, "odd", "fine")
    fine: Deferred[object] = Deferred()
    got: list[object] = []
    engine_answer(_Engine(fine), authz_request()).addCallback(got.append)
    fine.callback(decision)
    assert got == [decision]


def test_an_unknown_plugin_suggests_the_closest_installed_name(tmp_path: Path) -> None:
    """A misspelled built-in or drop-in name is answered with the name it most likely
    meant."""
    dropin(tmp_path, "counter", COUNTER)
    with pytest.raises(PluginLoadError, match=r"did you mean 'file_catalog'\?"):
        load_stack(tmp_path, ["file_catalgo"], plugin_paths=["addons"])
    with pytest.raises(PluginLoadError, match=r"did you mean 'counter'\?"):
        load_stack(tmp_path, ["countr"], plugin_paths=["addons"])


def test_tgw_plugins_with_a_config_lists_each_sites_stack_in_load_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tgw plugins --config`` lists the drop-ins of plugin_paths with their hooks, and
    each site's stack: its plugins, then the essential ones."""
    dropin(tmp_path, "counter", COUNTER)
    (tmp_path / "tgw.toml").write_text(
        textwrap.dedent(
            """
            [gateway]
            plugin_paths = ["addons"]
            [sites.main]
            listen = "tcp:0:interface=127.0.0.1"
            name = "legacy-gw"
            trust_domain = "11111111-2222-3333-4444-555555555555.consul"
            default_policy = "allow"
            plugins = ["counter", "file_catalog", "builtin_ca"]
            [sites.main.file_catalog]
            paths = ["addons"]
            """
        )
    )
    assert tgw_main(["plugins", "--config", str(tmp_path / "tgw.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith("counter ")
        and "drop-in " in line
        and line.endswith(": tgw_connection_closed")
        for line in out
    )
    stack = out[out.index("site main:") + 1 :]
    assert [line.split(":")[0].strip() for line in stack] == [
        "1. counter",
        "2. file_catalog",
        "3. builtin_ca",
        "4. mesh_hop",
        "5. upstream_tls",
        "6. plain_upstream",
    ]


TAGGERS = """
class Tagger:
    def __init__(self, name, value):
        self.name = name
        self.value = value

    def tgw_client_connected(self, event):
        event.conn.annotate("tier", self.value)
        event.conn.annotate(self.name + ".seen", True)


addons = [Tagger("alpha", "gold"), Tagger("beta", "bronze")]
"""


def test_an_annotation_key_belongs_to_the_addon_that_wrote_it_first(tmp_path: Path) -> None:
    """Two addons writing one annotation key would overwrite each other in the access
    log: the second is refused (an error of that addon, counted), the first value stays,
    and keys of their own are unaffected."""
    dropin(tmp_path, "taggers", TAGGERS)
    loaded = load_stack(tmp_path, ["taggers"], plugin_paths=["addons"])
    event = loaded.dispatch(client_connected())
    assert event.conn.annotations == {"tier": "gold", "alpha.seen": True}
    labels = {"hook": "tgw_client_connected"}
    assert loaded.metric("tgw_addon_errors_total", **labels) == 1


REROUTE_THEN_RAISE = """
def tgw_tls_clienthello(event):
    event.route_to("elsewhere.example")
    raise RuntimeError("addon bug")
"""


def test_an_addon_that_raises_after_rerouting_does_not_reroute(tmp_path: Path) -> None:
    """Like a veto, a reroute made by an addon that then raised is undone (and the error
    counted), so a bug never sends a connection elsewhere."""
    dropin(tmp_path, "rerouter", REROUTE_THEN_RAISE)
    loaded = load_stack(tmp_path, ["rerouter"], plugin_paths=["addons"])
    event = loaded.dispatch(clienthello_seen())
    assert (event.rerouted_to, event.rerouted_by) == (None, None)
    assert loaded.metric("tgw_addon_errors_total", hook="tgw_tls_clienthello") == 1
