"""The consul_intentions guard at an L7 destination: a request that matches an L7
intention but none of its permissions is decided by the agent's default (Consul's
"falls to the default policy"), not left to the intentions engine."""

from __future__ import annotations

from gwcore.contract.providers import CatalogView
from gwcore.plugins.consul_intentions import ConsulIntentionsSource, IntentionsGuard
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.l7_permissions import HttpPermission
from gwcore.policy.model import Intention, ServiceName, Verdict
from gwcore.testing import FakeSite, authz_request, site_config

READ_ONLY = Intention(
    ServiceName("web"),
    ServiceName("billing"),
    "",
    permissions=(HttpPermission.build("allow", path_prefix="/", methods=("GET",)),),
    origin="consul:config/service-intentions/billing",
)


def test_no_matching_permission_gets_the_agent_default(tmp_path) -> None:
    """GET matches a permission: the guard abstains (the intentions engine allows).
    POST matches the intention but no permission: the guard applies Consul's default
    (here ``allow``, fixed in the section). Without ``http`` the L7 intention matches
    and the guard abstains (the engine denies it on L4)."""
    config = site_config(
        tmp_path, ["consul_intentions"], {"consul_intentions": {"default_policy": "allow"}}
    )
    site = FakeSite(config, tmp_path / "state")
    site.view = CatalogView((), (READ_ONLY,), "v1")
    source = ConsulIntentionsSource(site)
    source.loaded = frozenset({ServiceName("billing")})  # as after the first Consul read
    guard = IntentionsGuard(source, site)
    get = authz_request(http=HttpRequestFacts("GET", "/invoices"))
    post = authz_request(http=HttpRequestFacts("POST", "/invoices"))
    assert guard.authorize(get).verdict is Verdict.ABSTAIN
    decision = guard.authorize(post)
    assert decision.verdict is Verdict.ALLOW
    assert "no permission matches POST /invoices" in decision.reason
    assert guard.authorize(authz_request()).verdict is Verdict.ABSTAIN
