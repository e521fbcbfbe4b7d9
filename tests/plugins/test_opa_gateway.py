"""The opa engine inside a running gateway beside intentions: real mTLS clients on
127.0.0.1, deny-overrides in both directions, the access log naming engine and reason,
shadow mode, a policy edit applied to new connections, and a remote OPA."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)
from tests.opa_server import opa_servers_fixture  # noqa: F401  (provides opa_servers)

# The stack names the plugin by module path until it is registered as "opa".
ENTRY = "opa"

ONLY_WEB = f"""package tgw.authz

import rego.v1

default decision := {{"allowed": false, "reason": "only web may reach billing"}}

decision := {{"allowed": true, "reason": "web is on the list"}} if {{
    input.attributes.source.principal == "spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
}}
"""


def setup(gateway, port: int, rules: list[dict], section: str) -> None:
    write_json(gateway.catalog / "gateway.json", gateway_entry("billing"))
    write_json(gateway.catalog / "registrations.json", [registration("billing", port)])
    write_json(gateway.catalog / "intentions.json", rules)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", ENTRY]
    gateway.extra_site = f'[sites.main."{ENTRY}"]\n{section}'


def embedded_section(**extra: str) -> str:
    lines = ['policies = ["policy"]', 'poll_interval = "0.1s"', 'path = "tgw/authz/decision"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines)


def write_policy(root: Path, text: str) -> None:
    (root / "policy").mkdir(exist_ok=True)
    with open(root / "policy" / "authz.rego", "w", encoding="utf-8") as f:
        f.write(text)


async def call(gateway, service: str) -> bytes:
    return await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files(service))


@pytest_twisted.ensureDeferred
async def test_intentions_allow_but_opa_denies(gateway, upstreams, tmp_path):
    """* => billing allowed by intentions; OPA denies api: api refused, logged as opa's."""
    up = upstreams(hello(b"served"))
    write_policy(tmp_path, ONLY_WEB)
    setup(gateway, up.port, [intentions("billing", ("*", "allow"))], embedded_section())
    await gateway.start()
    assert await call(gateway, "web") == b"served"
    assert await call(gateway, "api") == b""
    assert up.accepted == 1
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    denied = [r for r in gateway.access_records() if r["decision"] == "deny"]
    assert len(denied) == 1 and denied[0]["source"].endswith("/svc/api")
    assert denied[0]["engine"] == "opa"
    assert denied[0]["reason"] == "only web may reach billing"
    assert (
        gateway.metric(
            "tgw_authz_decisions_total", service="billing", engine="opa", decision="deny"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_intentions_deny_wins_over_an_opa_allow(gateway, upstreams, tmp_path):
    """web => billing denied by intentions; OPA allows web: still refused, by intentions."""
    up = upstreams(hello(b"served"))
    write_policy(tmp_path, ONLY_WEB)
    rules = [intentions("billing", ("web", "deny"), ("*", "allow"))]
    setup(gateway, up.port, rules, embedded_section())
    await gateway.start()
    assert await call(gateway, "web") == b""
    assert up.accepted == 0
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["decision"] == "deny" and record["engine"] == "intentions"
    assert "web" in record["reason"]
    assert gateway.metric("tgw_opa_decisions_total", decision="allow") == 1


@pytest_twisted.ensureDeferred
async def test_shadow_mode_lets_traffic_flow_and_counts_the_would_deny(
    gateway, upstreams, tmp_path
):
    """shadow = true: OPA would deny api, but intentions allow it and bytes flow."""
    up = upstreams(hello(b"served"))
    write_policy(tmp_path, ONLY_WEB)
    setup(
        gateway,
        up.port,
        [intentions("billing", ("*", "allow"))],
        embedded_section(shadow="true"),
    )
    await gateway.start()
    assert await call(gateway, "api") == b"served"
    assert gateway.metric("tgw_opa_shadow_decisions_total", decision="deny") == 1
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["decision"] == "allow" and record["engine"] == "intentions"


@pytest_twisted.ensureDeferred
async def test_policy_edit_changes_decisions_for_new_connections(gateway, upstreams, tmp_path):
    """Rewriting the policy file: api, refused before, is served after the next poll."""
    up = upstreams(hello(b"served"))
    write_policy(tmp_path, ONLY_WEB)
    setup(gateway, up.port, [intentions("billing", ("*", "allow"))], embedded_section())
    await gateway.start()
    assert await call(gateway, "api") == b""
    engine = next(e for e in gateway.site.engines if e.name == "opa")
    version = engine.policy_version
    write_policy(tmp_path, ONLY_WEB.replace("svc/web", "svc/api"))
    await gateway.wait_for(lambda: engine.policy_version != version)
    assert await call(gateway, "api") == b"served"
    assert await call(gateway, "web") == b""


@pytest_twisted.ensureDeferred
async def test_remote_opa_decides_through_the_gateway(gateway, upstreams, opa_servers):
    """url = an OPA-compatible server: its deny refuses api, its allow serves web."""
    up = upstreams(hello(b"served"))
    server = opa_servers.start(ONLY_WEB)
    section = f'url = "{server.url}"\npath = "tgw/authz/decision"\ntimeout = "2s"'
    setup(gateway, up.port, [intentions("billing", ("*", "allow"))], section)
    await gateway.start()
    assert await call(gateway, "web") == b"served"
    assert await call(gateway, "api") == b""
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    denied = [r for r in gateway.access_records() if r["decision"] == "deny"]
    assert denied[0]["engine"] == "opa" and denied[0]["reason"] == "only web may reach billing"
    assert len(server.requests) == 2
