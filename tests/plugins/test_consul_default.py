"""With the Consul intentions source, a connection no intention matches is decided as
the agent decides it (issue 17 item 5): default_intention_policy, else the ACL default,
allow when ACLs are off. Gateway tests run the full Consul stack against the Consul
double (gwcore/testing/consul.py), whose /v1/agent/self reports those settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gwcore.policy.consul_default import agent_default
from gwcore.policy.decision import combine
from gwcore.policy.model import Decision, Verdict
from gwcore.testing.consul import ConsulDouble
from tests.harness import hello, in_thread, request, sni_for
from tests.plugins.test_consul_gateway import ConsulGateway, external


@pytest.mark.parametrize(
    ("debug", "policy", "reason"),
    [
        ({"ACLsEnabled": False}, "allow", "ACLs are disabled"),
        ({"ACLsEnabled": True, "ACLResolverSettings": {"ACLDefaultPolicy": "deny"}}, "deny",
         "acl.default_policy = deny"),
        ({"ACLsEnabled": True, "ACLResolverSettings": {"ACLDefaultPolicy": "allow"}}, "allow",
         "acl.default_policy = allow"),
        ({"ACLsEnabled": False, "DefaultIntentionPolicy": "deny"}, "deny",
         "Default intention policy"),
        ({"ACLsEnabled": True}, "deny", "no default policy"),
    ],
)  # fmt: skip
def test_agent_default_follows_the_authorize_handler(debug, policy, reason):
    """default_intention_policy first, then the ACL default (allow without ACLs); what
    cannot be read is a deny."""
    found = agent_default({"Config": {}, "DebugConfig": debug})
    assert found.policy == policy and reason in found.reason
    assert agent_default({"Config": {}}).policy == "deny"


async def _gateway(tmp_path: Path, upstreams: Any, mode: str | None, **double: Any) -> Any:
    consul = ConsulDouble(reactor, jitter=False, **double)
    await consul.start()
    up = upstreams(hello(b"billing"))
    external(consul, "billing", up.port)
    consul.put_config(
        {"Kind": "service-intentions", "Name": "billing",
         "Sources": [{"Name": "ops", "Action": "allow"}]}
    )  # fmt: skip
    consul.link("legacy-gw", "billing")
    gw = ConsulGateway(tmp_path / "gw", double=consul)
    if mode is not None:
        gw.intentions_options = {"default_policy": mode}
    await gw.start()
    guard = next(e for e in gw.site.engines if e.name == "consul_intentions")
    await gw.wait_for(lambda: mode is not None or guard._source.default.readable)
    return gw, consul


@pytest.mark.parametrize(
    ("double", "mode", "body", "engine", "reason"),
    [
        pytest.param({}, None, b"billing", "consul_intentions",
                     "Default behavior configured by ACLs: ACLs are disabled", id="acls-off"),
        pytest.param({"acls_enabled": True}, None, b"", "consul_intentions",
                     "acl.default_policy = deny", id="acl-default-deny"),
        pytest.param({"default_intention_policy": "deny"}, None, b"", "consul_intentions",
                     "Default intention policy: deny", id="default-intention-policy"),
        pytest.param({}, "site", b"", "default", "default_policy=deny", id="site-mode"),
        pytest.param({"acls_enabled": True}, "allow", b"billing", "consul_intentions",
                     "default_policy in the consul_intentions section", id="fixed-allow"),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_no_matching_intention_is_decided_as_the_agent_decides(
    tmp_path, upstreams, double, mode, body, engine, reason
):
    """Uses the Consul double. web has no intention to billing (only ops has one): the
    connection is allowed or refused as the agent's default says, the access log names
    the engine and Consul's reason; default_policy = "site" restores the site default."""
    gw, consul = await _gateway(tmp_path, upstreams, mode, **double)
    try:
        files = gw.client("web")
        assert await in_thread(request, gw.port, sni_for("billing"), files) == body
        await gw.wait_for(lambda: len(gw.access_records()) == 1)
        record = gw.access_records()[0]
        assert record["engine"] == engine
        assert reason in record["reason"]
        # ops matches its intention: the intentions engine decides, not the default.
        assert await in_thread(request, gw.port, sni_for("billing"), gw.client("ops")) == (
            b"billing"
        )
    finally:
        await gw.stop()
        await consul.stop()


@pytest_twisted.ensureDeferred
async def test_site_default_policy_consul_follows_the_agent(tmp_path, upstreams):
    """Uses the Consul double. default_policy = "consul" on the site: with ACLs off the
    agent allows, and so does the gateway (engine consul_intentions)."""
    consul = ConsulDouble(reactor, jitter=False)
    await consul.start()
    up = upstreams(hello(b"billing"))
    external(consul, "billing", up.port)
    consul.link("legacy-gw", "billing")
    gw = ConsulGateway(tmp_path / "gw", double=consul)
    gw.site_options = {"default_policy": "consul"}
    try:
        await gw.start()
        guard = next(e for e in gw.site.engines if e.name == "consul_intentions")
        await gw.wait_for(lambda: guard._source.default.readable)
        assert await in_thread(request, gw.port, sni_for("billing"), gw.client("web")) == (
            b"billing"
        )
        await gw.wait_for(lambda: len(gw.access_records()) == 1)
        assert gw.access_records()[0]["engine"] == "consul_intentions"
    finally:
        await gw.stop()
        await consul.stop()


def test_combine_with_consul_default_fails_closed():
    """If every engine abstained under default_policy = "consul" (the consul_intentions
    engine never does for a loaded service), the result is a deny."""
    decision = combine([Decision(Verdict.ABSTAIN, "x", "no opinion")], "consul")
    assert decision.verdict is Verdict.DENY and "default_policy=consul" in decision.reason
