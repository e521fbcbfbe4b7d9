"""The opa authorization engine: embedded Rego (FakeSite and a fake clock), a remote OPA
(a real OPA-REST-compatible server on 127.0.0.1 evaluating real Rego), fail modes,
shadow mode, the decision cache and its own config validation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gwcore.contract.providers import AuthorizationEngine, AuthzRequest, CatalogView
from gwcore.plugins import opa
from gwcore.policy.model import Destination, ServiceName, SpiffeID, Verdict
from gwcore.policy.sni import service_sni
from gwcore.testing import TRUST_DOMAIN, FakeSite, site_config
from tests.opa_server import opa_servers_fixture  # noqa: F401  (provides opa_servers)

# The stack names the plugin by module path until it is registered as "opa".
ENTRY = "opa"
POLL = 0.5

ALLOW_LIST = f"""package tgw.authz

import rego.v1

default allow := false

allowed_sources := {{
    "spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web",
}}

allow if input.attributes.source.principal in allowed_sources
"""


def sni(service: str) -> str:
    return service_sni(ServiceName(service), "dc1", TRUST_DOMAIN)


def authz_request(
    source: str = "web",
    destination: str = "billing",
    server_name: str | None = None,
    meta: dict[str, str] | None = None,
) -> AuthzRequest:
    return AuthzRequest(
        site="main",
        gateway_name="legacy-gw",
        datacenter="dc1",
        source=SpiffeID(TRUST_DOMAIN, "default", "dc1", source),
        destination=Destination(ServiceName(destination), "dc1", meta=meta or {}),
        sni=sni(destination) if server_name is None else server_name,
        client_address="127.0.0.1",
        client_port=50123,
        gateway_address="127.0.0.1",
        gateway_port=8443,
    )


def write(path: Path, text: str) -> None:
    """Rewrite in place (same inode), as an editor saving over the file would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_site(tmp_path: Path, section: dict[str, Any], clock: Any = None, **site: Any) -> FakeSite:
    config = site_config(tmp_path, [ENTRY], {ENTRY: section}, **site)
    return FakeSite(config, tmp_path / "state", reactor=clock or Clock())


def start_engine(site: FakeSite) -> tuple[AuthorizationEngine, list[str]]:
    engines = opa.tgw_authorization_engines(site=site)
    assert len(engines) == 1 and isinstance(engines[0], AuthorizationEngine)
    calls: list[str] = []
    engines[0].start(lambda: calls.append("changed"))
    return engines[0], calls


def embedded(tmp_path: Path, policy: str, **section: Any) -> tuple[Any, FakeSite, list[str]]:
    write(tmp_path / "policy" / "authz.rego", policy)
    site = make_site(
        tmp_path,
        {"policies": ["policy"], "poll_interval": POLL, "path": "tgw/authz/allow", **section},
    )
    engine, calls = start_engine(site)
    return engine, site, calls


def sample(site: FakeSite, name: str, **labels: str) -> float:
    value = site.metrics.registry.get_sample_value(name, {"site": "main", **labels})
    return value or 0.0


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def texts(events: list[dict[str, Any]], level: str | None = None) -> list[str]:
    from twisted.logger import formatEvent

    return [
        formatEvent(e)
        for e in events
        if level is None or getattr(e.get("log_level"), "name", "") == level
    ]


# --- embedded ------------------------------------------------------------------------


def test_allow_list_by_source_spiffe_id(tmp_path):
    """A Rego allow-list of SPIFFE IDs: web is allowed, api denied, the rule named."""
    engine, _, _ = embedded(tmp_path, ALLOW_LIST)
    allowed = engine.authorize(authz_request("web"))
    denied = engine.authorize(authz_request("api"))
    assert (allowed.verdict, allowed.engine) == (Verdict.ALLOW, "opa")
    assert (denied.verdict, denied.reason) == (Verdict.DENY, "data.tgw.authz.allow = false")


def test_policy_deciding_on_sni(tmp_path):
    """The requested server name reaches the policy at input.attributes.tlsSession.sni."""
    policy = f"""package tgw.authz
import rego.v1
allow if input.attributes.tlsSession.sni == "{sni("billing")}"
allow := false if input.attributes.tlsSession.sni != "{sni("billing")}"
"""
    engine, _, _ = embedded(tmp_path, policy)
    assert engine.authorize(authz_request(destination="billing")).verdict is Verdict.ALLOW
    other = authz_request(destination="billing", server_name="billing.example.com")
    assert engine.authorize(other).verdict is Verdict.DENY


OPA_ENVOY_POLICY = f"""package envoy.authz

import input.attributes.source as source

default allow = false

# Written for Envoy's network ext_authz filter with the opa-envoy-plugin.
allow {{
    source.principal == "spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
}}
"""


def test_opa_envoy_plugin_policy_runs_unchanged(tmp_path):
    """A policy written for opa-envoy-plugin (old syntax, its default rule path) works as is."""
    write(tmp_path / "envoy" / "policy.rego", OPA_ENVOY_POLICY)
    engine, _ = start_engine(make_site(tmp_path, {"policies": ["envoy"]}))
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    denied = engine.authorize(authz_request("api"))
    assert (denied.verdict, denied.reason) == (Verdict.DENY, "data.envoy.authz.allow = false")


def test_object_result_carries_the_policys_reason(tmp_path):
    """{allowed, reason} at the configured path: the reason is the decision's reason."""
    policy = """package tgw.authz
import rego.v1
default decision := {"allowed": false, "reason": "billing is closed to everyone but web"}
decision := {"allowed": true} if input.tgw.source.service == "web"
"""
    engine, _, _ = embedded(tmp_path, policy, path="tgw/authz/decision")
    denied = engine.authorize(authz_request("api"))
    assert (denied.verdict, denied.reason) == (
        Verdict.DENY,
        "billing is closed to everyone but web",
    )
    allowed = engine.authorize(authz_request("web"))
    assert (allowed.verdict, allowed.reason) == (
        Verdict.ALLOW,
        "data.tgw.authz.decision.allowed = true",
    )


def test_destination_metadata_and_gateway_facts_reach_the_policy(tmp_path):
    """Catalog metadata is at attributes.destination.labels; site facts under input.tgw."""
    policy = """package tgw.authz
import rego.v1
default allow := false
allow if {
    input.attributes.destination.labels.team == "payments"
    input.tgw.gateway == "legacy-gw"
    input.tgw.source.namespace == "default"
}
"""
    # One catalog view never has two versions of a destination: no cache here.
    engine, _, _ = embedded(tmp_path, policy, cache_ttl=0)
    ok = authz_request(meta={"team": "payments"})
    assert engine.authorize(ok).verdict is Verdict.ALLOW
    assert engine.authorize(authz_request(meta={"team": "other"})).verdict is Verdict.DENY


def test_undefined_result_fails_closed_and_is_counted(tmp_path):
    """No default and no matching rule: undefined is a deny naming the cause."""
    policy = "package tgw.authz\nimport rego.v1\nallow if input.nothing == 1\n"
    engine, site, _ = embedded(tmp_path, policy)
    decision = engine.authorize(authz_request())
    assert decision.verdict is Verdict.DENY
    assert decision.reason == "fail-closed: data.tgw.authz.allow is undefined"
    assert sample(site, "tgw_opa_errors_total", kind="undefined") == 1
    assert sample(site, "tgw_opa_decisions_total", decision="error") == 1


def test_fail_open_allows_counts_and_warns(tmp_path, logged):
    """fail_open = true: an undefined result allows, counted in its own metric and warned."""
    policy = "package tgw.authz\nimport rego.v1\nallow if input.nothing == 1\n"
    engine, site, _ = embedded(tmp_path, policy, fail_open=True)
    decision = engine.authorize(authz_request())
    assert (decision.verdict, decision.reason) == (
        Verdict.ALLOW,
        "fail-open: data.tgw.authz.allow is undefined",
    )
    assert sample(site, "tgw_opa_fail_open_total") == 1
    assert any("failed open" in t for t in texts(logged, "warn"))


def test_non_boolean_result_is_an_error(tmp_path):
    """A rule returning a string is neither allow nor deny: fail closed, saying what came."""
    engine, site, _ = embedded(tmp_path, 'package tgw.authz\nallow := "yes"\n')
    decision = engine.authorize(authz_request())
    assert decision.verdict is Verdict.DENY and '"yes"' in decision.reason
    assert sample(site, "tgw_opa_errors_total", kind="bad_result") == 1


def test_evaluation_error_fails_closed(tmp_path):
    """Conflicting rule values at evaluation time are an error (deny), not a crash."""
    policy = """package tgw.authz
import rego.v1
allow := true if input.tgw.source.service == "web"
allow := false if input.tgw.destination.service == "billing"
"""
    engine, site, _ = embedded(tmp_path, policy)
    decision = engine.authorize(authz_request("web", "billing"))
    assert decision.verdict is Verdict.DENY and "evaluation failed" in decision.reason
    assert sample(site, "tgw_opa_errors_total", kind="evaluation") == 1


def test_syntax_error_keeps_the_previous_policy_and_names_file_and_line(tmp_path, logged):
    """A bad edit is rejected with file:line:column; the old policy keeps deciding."""
    engine, site, calls = embedded(tmp_path, ALLOW_LIST)
    version = engine.policy_version
    path = tmp_path / "policy" / "authz.rego"
    write(path, "package tgw.authz\n\nimport rego.v1\n\nallow if {\n  input.a == \n}\n")
    site.reactor.advance(POLL)
    assert engine.policy_version == version and calls == []
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    assert engine.authorize(authz_request("api")).verdict is Verdict.DENY
    errors = texts(logged, "error")
    assert any(f"{path}:6:" in t and "previous policy stays" in t for t in errors), errors
    assert sample(site, "tgw_opa_policy_reloads_total", result="rejected") == 1


def test_editing_the_policy_changes_decisions_and_signals_the_site(tmp_path):
    """A good edit goes live at the next poll: new version, cache emptied, changed called."""
    engine, site, calls = embedded(tmp_path, ALLOW_LIST)
    version = engine.policy_version
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW  # now cached
    write(tmp_path / "policy" / "authz.rego", ALLOW_LIST.replace("svc/web", "svc/api"))
    site.reactor.advance(POLL)
    assert engine.policy_version != version
    assert calls == ["changed"]
    assert engine.authorize(authz_request("web")).verdict is Verdict.DENY
    assert engine.authorize(authz_request("api")).verdict is Verdict.ALLOW
    assert sample(site, "tgw_opa_policy_reloads_total", result="applied") == 2


def test_first_policy_broken_denies_with_the_compile_error(tmp_path):
    """With no policy ever compiled, every decision is a deny carrying the problem."""
    engine, site, _ = embedded(tmp_path, "package tgw.authz\nallow if {\n")
    decision = engine.authorize(authz_request())
    assert decision.verdict is Verdict.DENY
    assert "policy rejected" in decision.reason and "authz.rego:" in decision.reason
    assert sample(site, "tgw_opa_errors_total", kind="no_policy") == 1


def test_directory_policies_span_several_files(tmp_path):
    """Every *.rego file in a directory is loaded (a helper package used by the rule)."""
    write(
        tmp_path / "policy" / "lists.rego",
        f'package tgw.lists\nfriends := {{"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"}}\n',
    )
    write(tmp_path / "policy" / "README.txt", "not a policy {")
    policy = """package tgw.authz
import rego.v1
default allow := false
allow if input.attributes.source.principal in data.tgw.lists.friends
"""
    engine, _, _ = embedded(tmp_path, policy)
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    assert engine.authorize(authz_request("api")).verdict is Verdict.DENY


# --- cache and shadow --------------------------------------------------------------------


def test_cache_answers_repeats_until_the_ttl(tmp_path):
    """Same (source, destination, policy): one evaluation per TTL; another source misses."""
    engine, site, _ = embedded(tmp_path, ALLOW_LIST, cache_ttl="10s")
    for _ in range(3):
        assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 1
    assert sample(site, "tgw_opa_cache_lookups_total", result="hit") == 2
    engine.authorize(authz_request("api"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 2
    site.reactor.advance(10)
    engine.authorize(authz_request("web"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 3


def test_catalog_change_empties_the_cache(tmp_path):
    """Destination metadata is input, so a new catalog view means evaluating again."""
    engine, site, _ = embedded(tmp_path, ALLOW_LIST)
    engine.authorize(authz_request("web"))
    site.publish_view(CatalogView((), (), "v2"))
    engine.authorize(authz_request("web"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 2


def test_cache_ttl_zero_evaluates_every_time(tmp_path):
    engine, site, _ = embedded(tmp_path, ALLOW_LIST, cache_ttl=0)
    for _ in range(3):
        engine.authorize(authz_request("web"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 3


def test_cache_is_bounded():
    """Past cache_size the oldest entry goes."""
    cache = opa.DecisionCache(ttl=60, size=2)
    value = opa.Evaluation(True, "ok")
    for key in ("a", "b", "c"):
        cache.put(key, value, now=0)
    assert len(cache) == 2 and cache.get("a", 1) is None and cache.get("c", 1) == value


def test_shadow_mode_abstains_and_counts_what_it_would_do(tmp_path, logged):
    """Shadow: the engine abstains (others decide), the would-deny is counted and logged."""
    engine, site, _ = embedded(tmp_path, ALLOW_LIST, shadow=True)
    would_deny = engine.authorize(authz_request("api"))
    would_allow = engine.authorize(authz_request("web"))
    assert would_deny.verdict is Verdict.ABSTAIN and would_allow.verdict is Verdict.ABSTAIN
    assert would_deny.reason == "shadow mode, would deny: data.tgw.authz.allow = false"
    assert sample(site, "tgw_opa_shadow_decisions_total", decision="deny") == 1
    assert sample(site, "tgw_opa_shadow_decisions_total", decision="allow") == 1
    assert sample(site, "tgw_opa_decisions_total", decision="deny") == 0
    assert any("would deny" in t for t in texts(logged, "info"))


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "give exactly one of policies"),
        ({"policies": ["p"], "url": "http://127.0.0.1:8181"}, "give exactly one of policies"),
        ({"policies": []}, "must name at least one"),
        ({"url": "ftp://opa"}, "is not an http:// or https:// URL"),
        ({"url": "http://127.0.0.1:8181", "path": "data.envoy.allow"}, "is not a rule path"),
        ({"url": "http://127.0.0.1:8181", "timeout": "5s"}, "must be below the site's"),
        ({"url": "http://127.0.0.1:8181", "poll_interval": "1s"}, "only applies to embedded"),
        ({"policies": ["p"], "retries": 2}, "only applies to a remote OPA"),
        ({"url": "http://127.0.0.1:8181", "retries": 9}, "must be between 0 and 5"),
        ({"url": "http://127.0.0.1:8181", "fail_open": "yes"}, "must be true or false"),
        ({"url": "http://127.0.0.1:8181", "cache_ttl": "soon"}, "must be a duration"),
        ({"url": "http://127.0.0.1:8181", "shadw": True}, "unknown key"),
        ({"policies": ["missing"]}, "does not exist"),
    ],
)
def test_bad_sections_are_reported(tmp_path, section, message):
    (tmp_path / "p").mkdir()
    write(tmp_path / "p" / "a.rego", "package envoy.authz\ndefault allow := false\n")
    config = site_config(tmp_path, [ENTRY], {ENTRY: section})
    problems = opa.tgw_validate_site_config(site=config)
    assert any(message in p.message for p in problems), [str(p) for p in problems]
    assert all(p.key.startswith(f"sites.main.{ENTRY}") for p in problems)


def test_check_config_reports_the_broken_file_and_line(tmp_path):
    """tgw check-config compiles the policies: the problem names file:line:column."""
    write(tmp_path / "p" / "good.rego", "package envoy.authz\ndefault allow := false\n")
    write(tmp_path / "p" / "bad.rego", "package envoy.other\n\nallow if {\n  input.a == \n}\n")
    config = site_config(tmp_path, [ENTRY], {ENTRY: {"policies": ["p"]}})
    problems = [str(p) for p in opa.tgw_validate_site_config(site=config)]
    assert len(problems) == 1 and f"{tmp_path / 'p' / 'bad.rego'}:4:11:" in problems[0], problems


def test_valid_sections_have_no_problems(tmp_path):
    write(tmp_path / "p" / "a.rego", "package envoy.authz\ndefault allow := false\n")
    for section in (
        {"policies": ["p"], "shadow": True, "cache_ttl": "1m", "poll_interval": "2s"},
        {"url": "https://opa.internal:8181/", "timeout": "250ms", "retries": 0, "fail_open": True},
    ):
        config = site_config(tmp_path, [ENTRY], {ENTRY: section})
        assert list(opa.tgw_validate_site_config(site=config)) == []


def test_absent_from_the_stack_means_no_engine(tmp_path):
    config = site_config(tmp_path, [])
    site = FakeSite(config, tmp_path / "state")
    assert opa.tgw_authorization_engines(site=site) == []
    assert opa.tgw_validate_site_config(site=config) == []


# --- remote --------------------------------------------------------------------------

REMOTE_POLICY = f"""package envoy.authz

import rego.v1

default allow := false

allow if input.attributes.source.principal == "spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
"""


def remote_engine(tmp_path: Path, url: str, **section: Any) -> tuple[Any, FakeSite]:
    site = make_site(tmp_path, {"url": url, "timeout": "2s", **section}, clock=reactor)
    engine, _ = start_engine(site)
    return engine, site


async def decide(engine: Any, request: AuthzRequest) -> Any:
    return await engine.authorize(request)


@pytest_twisted.ensureDeferred
async def test_remote_allow_and_deny_from_real_rego(tmp_path, opa_servers):
    """An OPA-compatible server evaluating real Rego: web allowed, api denied; input shape."""
    server = opa_servers.start(REMOTE_POLICY)
    engine, _ = remote_engine(tmp_path, server.url, cache_ttl=0)
    try:
        assert (await decide(engine, authz_request("web"))).verdict is Verdict.ALLOW
        denied = await decide(engine, authz_request("api"))
        assert (denied.verdict, denied.reason) == (Verdict.DENY, "data.envoy.authz.allow = false")
        assert server.requests[0]["path"] == "/v1/data/envoy/authz/allow"
        sent = server.requests[0]["body"]["input"]["attributes"]
        assert sent["source"]["principal"].endswith("/svc/web")
        assert sent["destination"]["principal"].endswith("/svc/billing")
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_remote_500_fails_closed_without_retrying(tmp_path, opa_servers):
    """HTTP 500 is an evaluation error: deny with OPA's message, and not asked twice."""
    server = opa_servers.start(REMOTE_POLICY)
    server.fail_statuses = [500]
    engine, site = remote_engine(tmp_path, server.url)
    try:
        decision = await decide(engine, authz_request("web"))
        assert decision.verdict is Verdict.DENY
        assert decision.reason.startswith("fail-closed: OPA answered HTTP 500")
        assert len(server.requests) == 1
        assert sample(site, "tgw_opa_errors_total", kind="http_status") == 1
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_remote_503_is_retried(tmp_path, opa_servers):
    """502/503/504 are safe and useful to retry: the second attempt decides."""
    server = opa_servers.start(REMOTE_POLICY)
    server.fail_statuses = [503]
    engine, _ = remote_engine(tmp_path, server.url, retries=1)
    try:
        assert (await decide(engine, authz_request("web"))).verdict is Verdict.ALLOW
        assert len(server.requests) == 2
    finally:
        await engine.stop()


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
@pytest_twisted.ensureDeferred
async def test_remote_timeout(tmp_path, opa_servers, fail_open):
    """A stalled OPA: deny after the timeout, or with fail_open an allow that is counted."""
    server = opa_servers.start(REMOTE_POLICY)
    server.stall.set()
    engine, site = remote_engine(tmp_path, server.url, timeout="0.3s", fail_open=fail_open)
    try:
        decision = await decide(engine, authz_request("api"))
        expected = Verdict.ALLOW if fail_open else Verdict.DENY
        assert decision.verdict is expected
        assert "OPA did not answer within 0.3s" in decision.reason
        assert sample(site, "tgw_opa_fail_open_total") == (1 if fail_open else 0)
        assert sample(site, "tgw_opa_errors_total", kind="timeout") == 1
    finally:
        server.release.set()
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_remote_unreachable_fails_closed(tmp_path):
    """Nothing listening: after the retry, a deny that says OPA is unreachable."""
    from tests.harness import free_port

    engine, site = remote_engine(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        decision = await decide(engine, authz_request("web"))
        assert decision.verdict is Verdict.DENY and "OPA unreachable" in decision.reason
        assert "attempts: 2" in decision.reason
        assert sample(site, "tgw_opa_errors_total", kind="unavailable") == 1
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_remote_requests_in_flight_are_bounded(tmp_path, opa_servers):
    """max_connections = 1: concurrent evaluations queue; OPA never sees two at once."""
    server = opa_servers.start(REMOTE_POLICY)
    server.stall.set()
    engine, _ = remote_engine(tmp_path, server.url, max_connections=1, cache_ttl=0)
    try:
        pending = [engine.authorize(authz_request(s)) for s in ("web", "api", "web")]
        from tests.harness import sleep

        await sleep(0.2)
        assert len(server.requests) == 1
        server.stall.clear()
        server.release.set()
        decisions = [await d for d in pending]
        assert [d.verdict for d in decisions] == [Verdict.ALLOW, Verdict.DENY, Verdict.ALLOW]
        assert server.max_in_flight == 1
    finally:
        await engine.stop()


def test_policy_file_paths_resolve_against_the_config_directory(tmp_path):
    """Relative policy paths are read from beside the config file, not the cwd."""
    write(tmp_path / "policy" / "authz.rego", ALLOW_LIST)
    cwd = os.getcwd()
    os.chdir("/")
    try:
        engine, _, _ = embedded(tmp_path, ALLOW_LIST)
        assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    finally:
        os.chdir(cwd)
