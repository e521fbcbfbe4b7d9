"""Tests for the plugin author's harness in gwcore.testing (gwcore/testing/stack.py):
payload builders, load_stack dispatching events without sockets, metric_value, and
metric families claimed by one plugin."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import Counter

from gwcore.contract import hookspecs
from gwcore.contract.metrics import GatewayMetrics
from gwcore.policy.model import Verdict
from gwcore.testing import (
    EVENT_HOOK_OF,
    authorization_done,
    authz_request,
    client_connected,
    clienthello_seen,
    connection_closed,
    endpoint_choice,
    handshake_done,
    load_stack,
    metric_value,
    routes_changed,
    site_started,
    upstream_connected,
    upstream_failed,
)

# Notes every event it gets, vetoes "batch", counts closes in a family of its own, and
# provides an engine that allows "web".
RECORDER = """
from gwcore.policy.model import Decision, Verdict
from prometheus_client import Counter

seen = []


class Engine:
    name = "recorder"
    policy_version = "1"

    def start(self, changed):
        return None

    def stop(self):
        return None

    def authorize(self, request):
        if request.source.name == "web":
            return Decision(Verdict.ALLOW, "recorder", "web is fine")
        return Decision(Verdict.ABSTAIN, "recorder", "not mine")


class Recorder:
    name = "recorder"

    def tgw_authorization_engines(self, site):
        self.closed = site.metrics.family(
            Counter, "recorder_closed", "Closed connections.", ["site"], owner="recorder"
        )
        return [Engine()]

    def tgw_handshake_done(self, event):
        seen.append(type(event).__name__)
        if event.identity.name == "batch":
            event.veto("batch is not welcome")

    def tgw_connection_closed(self, event):
        seen.append(type(event).__name__)
        self.closed.labels(site=event.conn.site).inc()
"""

CONNECTION_HOOKS = [h for h in hookspecs.EVENT_HOOKS if h not in hookspecs.HTTP_HOOKS]
for _hook in CONNECTION_HOOKS:
    if _hook not in ("tgw_handshake_done", "tgw_connection_closed"):
        RECORDER += f"""
    def {_hook}(self, event):
        seen.append(type(event).__name__)
"""
RECORDER += "\n\naddons = [Recorder()]\n"

BUILDERS = [
    site_started,
    routes_changed,
    client_connected,
    clienthello_seen,
    handshake_done,
    authorization_done,
    endpoint_choice,
    upstream_connected,
    upstream_failed,
    connection_closed,
]


def test_every_event_payload_has_a_builder_and_a_hook() -> None:
    """One builder per event hook, each building the payload that hook receives."""
    assert sorted(EVENT_HOOK_OF[type(build())] for build in BUILDERS) == sorted(CONNECTION_HOOKS)


def test_load_stack_dispatches_every_event_and_collects_providers(tmp_path: Path) -> None:
    """A stack loaded by the harness calls each addon's hooks with the built payloads, in
    stack order, applies vetoes, collects the engine, decides, and the plugin's own
    metric is readable with metric_value."""
    (tmp_path / "recorder.py").write_text(textwrap.dedent(RECORDER))
    loaded = load_stack(tmp_path, ["recorder.py"], default_policy="deny")
    events = [build() for build in BUILDERS]
    for event in events:
        loaded.dispatch(event)
    addon = loaded.stack.pm.get_plugin("recorder[0:recorder]")
    module = sys.modules[type(addon).__module__]
    assert module.seen == [type(e).__name__ for e in events]
    batch = loaded.dispatch(handshake_done(source="batch"))
    assert (batch.veto_reason, batch.vetoed_by) == (
        "batch is not welcome",
        "recorder[0:recorder]",
    )
    assert loaded.decide(authz_request("web")).verdict is Verdict.ALLOW
    assert loaded.decide(authz_request("batch")).verdict is Verdict.DENY  # default_policy
    assert loaded.metric("recorder_closed_total") == 1


def test_metric_value_reads_a_sample_and_zero_when_absent() -> None:
    metrics = GatewayMetrics()
    metrics.addon_errors.labels(site="main", hook="tgw_client_connected").inc(2)
    labels = {"site": "main", "hook": "tgw_client_connected"}
    assert metric_value(metrics, "tgw_addon_errors_total", **labels) == 2
    assert metric_value(metrics, "tgw_addon_errors_total", site="other", hook="x") == 0


def test_a_family_claimed_by_one_plugin_is_refused_to_another() -> None:
    """Two plugins that picked one metric name would count into each other's family:
    the second owner (or the same name with other labels) is refused, naming the first."""
    metrics = GatewayMetrics()
    first = metrics.family(Counter, "x_events", "X.", ["site"], owner="alpha")
    assert metrics.family(Counter, "x_events", "X.", ["site"], owner="alpha") is first
    with pytest.raises(ValueError, match="registered by plugin 'alpha', not 'beta'"):
        metrics.family(Counter, "x_events", "X.", ["site"], owner="beta")
    with pytest.raises(ValueError, match=r"exists with labels \['site'\] \(plugin 'alpha'\)"):
        metrics.family(Counter, "x_events", "X.", ["site", "service"])


BROKEN_ENGINE = """
class Engine:
    name = "broken"
    policy_version = "1"

    def start(self, changed):
        return None

    def stop(self):
        return None

    def authorize(self, request):
        return None  # forgot to return a Decision


class Broken:
    name = "broken"

    def tgw_authorization_engines(self, site):
        return [Engine()]


addons = [Broken()]
"""


def test_harness_decide_fails_closed_on_an_engine_that_answers_none(tmp_path: Path) -> None:
    """An engine answering ``None`` is a deny naming the engine in the harness, as in the
    gateway (fail closed), even under ``default_policy = "allow"`` — not an exception the
    plugin author's test would have to catch."""
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_ENGINE))
    loaded = load_stack(tmp_path, ["broken.py"], default_policy="allow")
    decision = loaded.decide(authz_request("web"))
    assert decision.verdict is Verdict.DENY
    assert decision.engine == "broken"
    assert "NoneType" in decision.reason or "None" in decision.reason
