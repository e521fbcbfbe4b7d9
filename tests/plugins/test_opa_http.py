"""The OPA engine decides L7 requests one by one from ``AuthzRequest.http``: a real
Rego policy (embedded rego-cpp) reading attributes.request.http and parsed_path."""

from __future__ import annotations

from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Verdict
from gwcore.testing import authz_request
from tests.plugins.test_opa import embedded, sample

PUBLIC_GET_ONLY = """\
package tgw.authz

import rego.v1

default allow := false

allow if {
    input.attributes.request.http.method == "GET"
    input.parsed_path[0] == "public"
}
"""


def request(method: str, path: str) -> object:
    return authz_request(http=HttpRequestFacts(method, path, "billing"))


def test_policy_allows_get_public_only(tmp_path):
    """GET /public/... is allowed; POST /public, GET /private and an L4 connection
    (no http: parsed_path [""]) are denied by the same real Rego policy."""
    engine, _, _ = embedded(tmp_path, PUBLIC_GET_ONLY)
    assert engine.authorize(request("GET", "/public/a?x=1")).verdict is Verdict.ALLOW
    assert engine.authorize(request("POST", "/public")).verdict is Verdict.DENY
    assert engine.authorize(request("GET", "/private")).verdict is Verdict.DENY
    assert engine.authorize(authz_request()).verdict is Verdict.DENY


def test_identical_requests_share_a_cached_decision(tmp_path):
    """Identical per-request inputs share the bounded decision cache (a repeat of the
    same request on the same connection hits); another path is another input."""
    engine, site, _ = embedded(tmp_path, PUBLIC_GET_ONLY, cache_ttl="10s")
    engine.authorize(request("GET", "/public"))
    engine.authorize(request("GET", "/public"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="hit") == 1
    engine.authorize(request("GET", "/public/other"))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 2
