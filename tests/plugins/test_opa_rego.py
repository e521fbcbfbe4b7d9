"""The embedded evaluator (regopy) refuses policies that call a built-in it lacks or runs
unlike OPA, at check-config, at start and on reload, naming the built-in and
file:line:column (real Rego, FakeSite and a fake clock)."""

from __future__ import annotations

import pytest

from gwcore.plugins import opa
from gwcore.policy.model import Verdict
from gwcore.testing import site_config
from tests.plugins.test_opa import (
    ALLOW_LIST,
    ENTRY,
    POLL,
    authz_request,
    embedded,
    sample,
    write,
)

# The reproduction: the client (127.0.0.1) is in the blocked range.
BLOCK_LOOPBACK = """package tgw.authz
import rego.v1

blocked if net.cidr_contains("127.0.0.0/8", input.attributes.source.address.socketAddress.address)

default allow := false
allow if not blocked
"""


def test_check_config_refuses_a_policy_calling_a_missing_builtin(tmp_path):
    """check-config names the built-in and file:line:column instead of passing the policy."""
    write(tmp_path / "p" / "authz.rego", BLOCK_LOOPBACK)
    config = site_config(tmp_path, [ENTRY], {ENTRY: {"policies": ["p"]}})
    problems = [str(p) for p in opa.tgw_validate_site_config(site=config)]
    assert len(problems) == 1, problems
    assert f"{tmp_path / 'p' / 'authz.rego'}:4:12: built-in net.cidr_contains" in problems[0]


def test_starting_with_such_a_policy_denies_instead_of_allowing(tmp_path):
    """At start the policy is refused, so there is no policy: a deny naming the built-in,
    never the allow that an undefined `blocked` would give."""
    engine, site, _ = embedded(tmp_path, BLOCK_LOOPBACK)
    decision = engine.authorize(authz_request("web"))
    assert decision.verdict is Verdict.DENY
    assert "net.cidr_contains" in decision.reason and "authz.rego:4:12" in decision.reason
    assert sample(site, "tgw_opa_policy_reloads_total", result="rejected") == 1


def test_reloading_into_such_a_policy_keeps_the_previous_one(tmp_path):
    """An edit that adds net.cidr_merge is rejected like a syntax error: old policy stays."""
    engine, site, calls = embedded(tmp_path, ALLOW_LIST)
    version = engine.policy_version
    write(
        tmp_path / "policy" / "authz.rego",
        ALLOW_LIST + 'merged := net.cidr_merge(["10.0.0.0/9", "10.128.0.0/9"])\n',
    )
    site.reactor.advance(POLL)
    assert engine.policy_version == version and calls == []
    assert engine.authorize(authz_request("web")).verdict is Verdict.ALLOW
    assert engine.authorize(authz_request("api")).verdict is Verdict.DENY
    assert sample(site, "tgw_opa_policy_reloads_total", result="rejected") == 1


def test_a_helper_module_calling_x509_parsing_is_refused(tmp_path):
    """A call in any module of the set counts, here crypto.x509.parse_certificates, which
    rego-cpp answers with three fields where OPA gives the whole certificate."""
    write(
        tmp_path / "policy" / "certs.rego",
        "package tgw.certs\nimport rego.v1\n\n"
        "subjects contains c.Subject if some c in crypto.x509.parse_certificates(input.c)\n",
    )
    engine, _, _ = embedded(tmp_path, ALLOW_LIST)
    decision = engine.authorize(authz_request("web"))
    assert decision.verdict is Verdict.DENY
    assert "certs.rego:4:42: built-in crypto.x509.parse_certificates is refused" in (
        decision.reason
    )


def test_builtins_that_run_as_in_opa_still_decide(tmp_path):
    """glob.match on the SNI (a built-in rego-cpp implements) loads and decides."""
    policy = """package tgw.authz
import rego.v1
default allow := false
allow if glob.match("billing.**", ["."], input.attributes.tlsSession.sni)
"""
    engine, _, _ = embedded(tmp_path, policy)
    assert engine.authorize(authz_request(destination="billing")).verdict is Verdict.ALLOW
    assert engine.authorize(authz_request(destination="payroll")).verdict is Verdict.DENY


def test_tgw_check_config_command_prints_the_refusal(tmp_path, capsys):
    """The `tgw check-config` command itself: exit 1, the built-in and file:line named."""
    from gwcore.cli import main
    from tests.harness import Gateway

    (tmp_path / "catalog").mkdir()
    write(tmp_path / "policy" / "authz.rego", BLOCK_LOOPBACK)
    gateway = Gateway(
        tmp_path,
        plugins=["file_catalog", "builtin_ca", "intentions", ENTRY],
        extra_site=f'[sites.main."{ENTRY}"]\npolicies = ["policy"]\npath = "tgw/authz/allow"',
    )
    path = gateway.write_config()
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "authz.rego:4:12: built-in net.cidr_contains is not implemented" in err


@pytest.mark.parametrize(
    "call",
    [
        pytest.param('net.cidr_contains\n\t("127.0.0.0/8", ADDR)', id="newline-before-paren"),
        pytest.param('net .cidr_contains("127.0.0.0/8", ADDR)', id="space-before-dot"),
        pytest.param('net. cidr_contains ("127.0.0.0/8", ADDR)', id="space-after-dot"),
        pytest.param('net.cidr_contains # a comment\n("127.0.0.0/8", ADDR)', id="comment"),
    ],
)
def test_a_call_spelled_with_white_space_is_refused_too(tmp_path, call):
    """rego-cpp parses these spellings as the built-in call (an outside review found the
    first two passing check-config and allowing 10.1.2.3): each is refused at
    check-config, naming the built-in, so none can evaluate to undefined and allow."""
    address = "input.attributes.source.address.socketAddress.address"
    policy = BLOCK_LOOPBACK.replace(
        'net.cidr_contains("127.0.0.0/8", input.attributes.source.address.socketAddress.address)',
        call.replace("ADDR", address),
    )
    write(tmp_path / "p" / "authz.rego", policy)
    config = site_config(tmp_path, [ENTRY], {ENTRY: {"policies": ["p"]}})
    problems = [str(p) for p in opa.tgw_validate_site_config(site=config)]
    assert len(problems) == 1, problems
    assert f"{tmp_path / 'p' / 'authz.rego'}:4:12: built-in net.cidr_contains" in problems[0]
