"""The opa engine's decision cache is keyed on the whole input document, so no decision is
reused for a connection whose input differs in anything the policy may read (real Rego,
FakeSite and a fake clock)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gwcore.policy.model import Verdict
from tests.plugins.test_opa import authz_request, embedded, sample

EVEN_PORTS = """package tgw.authz
import rego.v1
default allow := false
allow if input.attributes.source.address.socketAddress.portValue % 2 == 0
"""


def test_a_decision_on_the_client_port_is_not_reused_for_another_port(tmp_path):
    """The issue's reproduction: an even-port rule; the allow cached for port 50124 must
    not be handed to port 50125 of the same client identity."""
    engine, site, _ = embedded(tmp_path, EVEN_PORTS, cache_ttl="60s")
    even = replace(authz_request("web"), client_port=50124)
    odd = replace(authz_request("web"), client_port=50125)
    assert engine.authorize(even).verdict is Verdict.ALLOW
    assert engine.authorize(odd).verdict is Verdict.DENY
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 2


@pytest.mark.parametrize(
    "change",
    [
        {"client_address": "127.0.0.2"},
        {"gateway_address": "127.0.0.9"},
        {"gateway_port": 9443},
        {"gateway_name": "other-gw"},
    ],
)
def test_any_other_input_field_is_part_of_the_key(tmp_path, change):
    """Whatever the document carries, a difference in it is a miss, never a hit."""
    engine, site, _ = embedded(
        tmp_path, EVEN_PORTS.replace("portValue % 2 == 0", "portValue > 0"), cache_ttl="60s"
    )
    engine.authorize(authz_request("web"))
    engine.authorize(replace(authz_request("web"), **change))
    assert sample(site, "tgw_opa_cache_lookups_total", result="miss") == 2
    assert sample(site, "tgw_opa_cache_lookups_total", result="hit") == 0


def test_the_same_connection_checked_again_is_a_hit(tmp_path):
    """Re-checking an open connection (same document) is what the cache still answers."""
    engine, site, _ = embedded(tmp_path, EVEN_PORTS, cache_ttl="60s")
    request = replace(authz_request("web"), client_port=50124)
    engine.authorize(request)
    assert engine.authorize(request).verdict is Verdict.ALLOW
    assert sample(site, "tgw_opa_cache_lookups_total", result="hit") == 1
