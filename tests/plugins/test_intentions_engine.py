"""The intentions engine plugin (plugins/intentions.py) on a FakeSite: it re-checks open
connections only when the intentions changed, and offers itself (and validates its
section) only to sites whose stack names it."""

from __future__ import annotations

from gwcore.contract.providers import CatalogView
from gwcore.plugins import intentions as plugin
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.l7_permissions import HttpPermission
from gwcore.policy.model import Intention, ServiceName, Verdict
from gwcore.testing import FakeSite, authz_request, site_config

ALLOW_WEB = Intention(ServiceName("web"), ServiceName("billing"), "allow", origin="test")
DENY_WEB = Intention(ServiceName("web"), ServiceName("billing"), "deny", origin="test")


def test_changed_is_called_only_when_the_intentions_change(tmp_path) -> None:
    """A catalog update with the same intentions (only routes moved) does not ask the
    site to re-check every open connection; a changed intention does, once."""
    site = FakeSite(site_config(tmp_path, ["intentions"]), tmp_path / "state")
    site.view = CatalogView((), (ALLOW_WEB,), "v1")
    (engine,) = plugin.tgw_authorization_engines(site)
    calls: list[int] = []
    engine.start(lambda: calls.append(1))
    before = engine.policy_version
    site.publish_view(CatalogView((), (ALLOW_WEB,), "v2"))  # routes changed, rules did not
    assert calls == [] and engine.policy_version == before
    site.publish_view(CatalogView((), (DENY_WEB,), "v3"))
    assert calls == [1] and engine.policy_version != before
    engine.stop()
    site.publish_view(CatalogView((), (ALLOW_WEB,), "v4"))  # stopped: nobody to tell
    assert calls == [1]


def test_only_sites_that_name_the_plugin_get_the_engine_or_its_checks(tmp_path) -> None:
    """A site without ``intentions`` in its stack gets no intentions engine; a site with
    it gets one, and an unknown key in its ``[sites.KEY.intentions]`` section is a
    problem naming the key."""
    without = FakeSite(site_config(tmp_path, []), tmp_path / "state")
    assert plugin.tgw_authorization_engines(without) == []
    with_section = site_config(tmp_path, ["intentions"], {"intentions": {"colour": "blue"}})
    problems = plugin.tgw_validate_site_config(with_section)
    assert [p.key for p in problems] == ["sites.main.intentions.colour"], problems
    assert plugin.tgw_validate_site_config(site_config(tmp_path, [])) == []


def test_l7_request_is_decided_per_request_with_the_policy_in_force(tmp_path) -> None:
    """At an L7 destination the engine decides each request from ``AuthzRequest.http``
    (first matching permission), and an intention edit applies to the next request
    decided, not only to new connections; without ``http`` the L7 intention denies."""
    read_only = Intention(
        ServiceName("web"),
        ServiceName("billing"),
        "",
        permissions=(HttpPermission.build("allow", path_prefix="/", methods=("GET",)),),
        origin="test",
    )
    site = FakeSite(site_config(tmp_path, ["intentions"]), tmp_path / "state")
    site.view = CatalogView((), (read_only,), "v1")
    (engine,) = plugin.tgw_authorization_engines(site)
    get = authz_request(http=HttpRequestFacts("GET", "/invoices"))
    post = authz_request(http=HttpRequestFacts("POST", "/invoices"))
    assert engine.authorize(get).verdict is Verdict.ALLOW
    assert engine.authorize(post).verdict is Verdict.ABSTAIN
    assert engine.authorize(authz_request()).verdict is Verdict.DENY
    site.publish_view(CatalogView((), (DENY_WEB,), "v2"))
    assert engine.authorize(get).verdict is Verdict.DENY
