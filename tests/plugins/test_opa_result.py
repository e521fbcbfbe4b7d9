"""What the opa engine does with a policy's answer: object results checked as
opa-envoy-plugin checks them (a malformed one is an error, so a deny), and dry_run
(the plugin's dry-run: a deny becomes a counted allow). Real Rego, FakeSite, fake clock;
and the remote mode through the project's OPA REST double."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from gwcore.plugins import opa
from gwcore.policy.model import Verdict
from gwcore.testing import site_config
from tests.opa_server import opa_servers_fixture  # noqa: F401  (provides opa_servers)
from tests.plugins.test_opa import (
    ALLOW_LIST,
    ENTRY,
    authz_request,
    decide,
    embedded,
    logged,  # noqa: F401  (fixture)
    remote_engine,
    sample,
    texts,
    write,
)


def object_policy(result: dict) -> str:
    return f"package tgw.authz\nimport rego.v1\ndecision := {json.dumps(result)}\n"


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"allowed": False, "http_status": "403"}, "http_status must be a number"),
        ({"allowed": False, "http_status": 999}, "http_status 999 is not"),
        ({"allowed": False, "http_status": 418}, "http_status 418 is not"),
        ({"allowed": False, "body": {"error": "no"}}, "body must be a string"),
        ({"allowed": True, "headers": "x-a: 1"}, "headers must be an object"),
        ({"allowed": True, "headers": {"x-a": 1}}, "header 'x-a' must be a string"),
        ({"allowed": False, "headers": [{"x-a": ["1", 2]}]}, "header 'x-a' must be"),
        ({"allowed": True, "dynamic_metadata": ["a"]}, "dynamic_metadata must be an object"),
        ({"allowed": True, "request_headers_to_remove": "x-a"}, "must be an array of strings"),
        ({"allowed": True, "response_headers_to_add": {"x-a": True}}, "header 'x-a' must"),
    ],
)
def test_malformed_result_objects_are_errors_so_denies(tmp_path, result, message):
    """Each answer opa-envoy-plugin refuses (its Check returns an error, Envoy denies) is
    a bad_result error here: fail closed, even when the object says allowed."""
    engine, site, _ = embedded(tmp_path, object_policy(result), path="tgw/authz/decision")
    decision = engine.authorize(authz_request("web"))
    assert decision.verdict is Verdict.DENY
    assert decision.reason.startswith("fail-closed: data.tgw.authz.decision: ")
    assert message in decision.reason
    assert sample(site, "tgw_opa_errors_total", kind="bad_result") == 1


@pytest.mark.parametrize(
    "result",
    [
        {"allowed": False, "http_status": 401, "body": "no", "headers": {"x-a": ["1", "2"]}},
        {"allowed": True, "headers": [{"x-a": "1"}], "dynamic_metadata": {"k": {"v": 1}}},
        {"allowed": True, "request_headers_to_remove": ["x-b"], "response_headers_to_add": {}},
        # Fields the plugin does not read for this outcome are not checked, as there.
        {"allowed": True, "http_status": "not read when allowed", "body": 7},
        {"allowed": False, "request_headers_to_remove": 7},
    ],
)
def test_well_formed_result_objects_decide(tmp_path, result):
    engine, _, _ = embedded(tmp_path, object_policy(result), path="tgw/authz/decision")
    expected = Verdict.ALLOW if result["allowed"] else Verdict.DENY
    decision = engine.authorize(authz_request("web"))
    assert decision.verdict is expected and not decision.reason.startswith("fail-")


def test_dry_run_allows_a_deny_and_counts_it(tmp_path, logged):  # noqa: F811
    """dry_run: api, denied by the policy, is allowed with a reason saying so; counted
    and logged; web's allow is untouched."""
    engine, site, _ = embedded(tmp_path, ALLOW_LIST, dry_run=True)
    would_deny = engine.authorize(authz_request("api"))
    assert (would_deny.verdict, would_deny.reason) == (
        Verdict.ALLOW,
        "dry-run, would deny: data.tgw.authz.allow = false",
    )
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    assert sample(site, "tgw_opa_dry_run_allowed_total") == 1
    assert sample(site, "tgw_opa_decisions_total", decision="deny") == 1
    assert any("would deny" in t for t in texts(logged, "info"))


def test_dry_run_leaves_errors_errors(tmp_path):
    """As in the plugin, dry-run forces only denies: an error still fails closed."""
    policy = "package tgw.authz\nimport rego.v1\nallow if input.nothing == 1\n"
    engine, site, _ = embedded(tmp_path, policy, dry_run=True)
    decision = engine.authorize(authz_request("web"))
    assert decision.verdict is Verdict.DENY and decision.reason.startswith("fail-closed:")
    assert sample(site, "tgw_opa_dry_run_allowed_total") == 0


def test_shadow_and_dry_run_together_are_refused(tmp_path):
    write(tmp_path / "p" / "a.rego", "package envoy.authz\ndefault allow := false\n")
    section = {"policies": ["p"], "shadow": True, "dry_run": True}
    config = site_config(tmp_path, [ENTRY], {ENTRY: section})
    problems = [str(p) for p in opa.tgw_validate_site_config(site=config)]
    assert any("at most one of shadow" in p for p in problems), problems


@pytest_twisted.ensureDeferred
async def test_remote_malformed_result_is_an_error(tmp_path, opa_servers):
    """The same checks apply to an OPA server's answer (the project's OPA REST double)."""
    server = opa_servers.start(
        object_policy({"allowed": False, "http_status": 42}).replace("tgw.authz", "envoy.authz")
    )
    engine, site = remote_engine(tmp_path, server.url, path="envoy/authz/decision")
    try:
        decision = await decide(engine, authz_request("web"))
        assert decision.verdict is Verdict.DENY and "http_status 42 is not" in decision.reason
        assert sample(site, "tgw_opa_errors_total", kind="bad_result") == 1
    finally:
        await engine.stop()
