"""Finding the OPA built-ins a Rego module calls, and which ones the embedded evaluator
refuses (tables; ``available`` is regopy's own ``is_builtin``)."""

from __future__ import annotations

import pytest
from regopy import Interpreter

from gwcore.policy.rego_builtins import (
    OPA_BUILTINS,
    UNLIKE_OPA,
    builtin_calls,
    refusal,
    unsupported_calls,
)

AVAILABLE = Interpreter().is_builtin


def test_calls_are_found_with_line_and_column_outside_comments_and_strings():
    """Comments, strings and raw strings hide names; a longer reference is the policy's own
    function; spaces before the parenthesis still make a call."""
    text = (
        "package t\n"
        "# net.cidr_merge(x) in a comment\n"
        'msg := "net.cidr_merge(x) in a string"\n'
        "raw := `net.cidr_expand(x)`\n"
        "own if data.lib.net.cidr_contains(1, 2)\n"
        'hit if {\n\tnet.cidr_contains ("10.0.0.0/8", input.ip)\n}\n'
        "n := count([1])\n"
    )
    assert list(builtin_calls(text)) == [("net.cidr_contains", 7, 2), ("count", 9, 6)]


@pytest.mark.parametrize(
    "name",
    [
        "net.cidr_contains",
        "net.cidr_intersects",
        "net.cidr_contains_matches",
        "net.cidr_merge",
        "crypto.x509.parse_certificates",
        "http.send",
        "trace",
    ],
)
def test_builtins_the_evaluator_lacks_or_runs_unlike_opa_are_refused(name):
    """Each of these is undefined (or a subset of OPA's answer) under rego-cpp: refused."""
    problems = unsupported_calls({"p.rego": f"package t\nx := {name}(input.a)\n"}, AVAILABLE)
    assert [(p.file, p.line, p.column) for p in problems] == [("p.rego", 2, 6)]
    assert f"built-in {name} " in problems[0].message


@pytest.mark.parametrize(
    "name", ["count", "glob.match", "regex.match", "strings.any_prefix_match", "print"]
)
def test_builtins_the_evaluator_runs_are_accepted(name):
    assert refusal(name, AVAILABLE) is None


def test_the_catalogue_holds_the_issue_built_ins_and_refusals_are_in_it():
    """Everything UNLIKE_OPA names is an OPA built-in (no typo hides a refusal)."""
    assert set(UNLIKE_OPA) <= OPA_BUILTINS
    assert {"net.cidr_contains", "net.cidr_merge", "http.send"} <= OPA_BUILTINS


def test_x509_parsing_still_differs_from_opa():
    """Why crypto.x509.parse_certificates is refused: rego-cpp returns three fields of a
    certificate where OPA returns the whole parse (NotAfter, Issuer, URIs...). When a
    regopy upgrade fixes this, this test fails and the refusal can go."""
    import base64

    from gwcore.contract.pki import certificate_pem, new_ca

    pem = certificate_pem(new_ca("example.consul")[0])
    interpreter = Interpreter()
    interpreter.set_input({"c": base64.b64encode(pem).decode()})
    output = interpreter.query("x := crypto.x509.parse_certificates(input.c)")
    parsed = output.results[0].bindings["x"][0]
    assert "NotAfter" not in parsed and "Issuer" not in parsed
