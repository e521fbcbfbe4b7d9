"""Per-request decisions of IntentionSet (``decide(..., http=facts)``): the first
matching intention by precedence decides; an L7 one by its first matching permission;
none matching abstains (the default policy), never falling to the next intention."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.decision import combine
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.intentions import IntentionSet
from gwcore.policy.l7_permissions import HttpPermission
from gwcore.policy.model import Intention, ServiceName, Verdict

WEB, BILLING = ServiceName("web"), ServiceName("billing")
ORIGIN = "/etc/tgw/intentions.json"


def l7(src: str, *permissions: HttpPermission) -> Intention:
    return Intention(ServiceName(src), BILLING, "", permissions=permissions, origin=ORIGIN)


def l4(src: str, action: str) -> Intention:
    return Intention(ServiceName(src), BILLING, action, origin=ORIGIN)


def get(path: str, method: str = "GET") -> HttpRequestFacts:
    return HttpRequestFacts(method, path, authority="billing")


ADMIN_DENY = HttpPermission.build("deny", path_prefix="/admin")
ALL_ALLOW = HttpPermission.build("allow", path_prefix="/")
READ_ALLOW = HttpPermission.build("allow", path_prefix="/", methods=("GET", "HEAD"))


def test_first_matching_permission_decides_and_is_named():
    """The first permission (entry order) that matches decides; the reason names the
    intention, its precedence and the permission's index and criteria."""
    rules = IntentionSet([l7("web", ADMIN_DENY, ALL_ALLOW)])
    denied = rules.decide(WEB, BILLING, get("/admin/users"))
    assert denied.verdict is Verdict.DENY
    assert 'permission 0 (PathPrefix "/admin") denies' in denied.reason
    assert "matched intention" in denied.reason and "precedence 9" in denied.reason
    allowed = rules.decide(WEB, BILLING, get("/invoices"))
    assert allowed.verdict is Verdict.ALLOW
    assert 'permission 1 (PathPrefix "/") allows' in allowed.reason


def test_no_matching_permission_abstains_instead_of_trying_the_next_intention():
    """web's L7 intention matches but none of its permissions does: the request falls
    to the default policy, not to the broader ``*`` allow (Consul's rule)."""
    rules = IntentionSet([l7("web", READ_ALLOW), l4("*", "allow")])
    decision = rules.decide(WEB, BILLING, get("/invoices", "POST"))
    assert decision.verdict is Verdict.ABSTAIN
    assert "no permission matches POST /invoices" in decision.reason
    assert combine([decision], "deny").verdict is Verdict.DENY
    assert combine([decision], "allow").verdict is Verdict.ALLOW
    # Another source still reaches the wildcard allow.
    assert rules.decide(ServiceName("api"), BILLING, get("/x", "POST")).verdict is Verdict.ALLOW


def test_l4_intention_decides_requests_by_its_action():
    """An intention with an Action decides every request by it."""
    rules = IntentionSet([l4("web", "deny"), l4("*", "allow")])
    assert rules.decide(WEB, BILLING, get("/")).verdict is Verdict.DENY
    assert rules.decide(ServiceName("api"), BILLING, get("/")).verdict is Verdict.ALLOW


def test_without_http_an_l7_intention_still_denies():
    """http=None keeps the L4 rule: an L7 intention denies the connection."""
    rules = IntentionSet([l7("web", ALL_ALLOW)])
    decision = rules.decide(WEB, BILLING)
    assert decision.verdict is Verdict.DENY
    assert "L7 intentions deny on L4 connections" in decision.reason


def test_permission_matching_ignores_the_query_string():
    """PathExact matches the path part only, as Envoy's RBAC url_path does."""
    rules = IntentionSet([l7("web", HttpPermission.build("allow", path_exact="/a"))])
    assert rules.decide(WEB, BILLING, get("/a?admin=1")).verdict is Verdict.ALLOW
    assert rules.decide(WEB, BILLING, get("/a/b")).verdict is Verdict.ABSTAIN


def test_same_permission_match_returns_the_same_decision_object():
    """Decisions are built once per (intention, permission): no allocation per allowed
    request."""
    rules = IntentionSet([l7("web", ADMIN_DENY, ALL_ALLOW)])
    assert rules.decide(WEB, BILLING, get("/a")) is rules.decide(WEB, BILLING, get("/b"))


_PERMS = st.lists(
    st.builds(
        lambda action, prefix: HttpPermission.build(action, path_prefix=prefix),
        st.sampled_from(["allow", "deny"]),
        st.sampled_from(["/", "/a", "/a/b", "/b", "/ab"]),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(_PERMS, st.sampled_from(["/", "/a", "/a/b/c", "/ab", "/b/x", "/c"]))
def test_first_match_order(permissions, path):
    """The verdict is the action of the first permission (in entry order) whose prefix
    the path has, else abstain — whatever comes after it."""
    rules = IntentionSet([l7("web", *permissions)])
    decision = rules.decide(WEB, BILLING, get(path))
    first = next((p for p in permissions if path.startswith(p.path_prefix)), None)
    if first is None:
        assert decision.verdict is Verdict.ABSTAIN
    else:
        assert decision.verdict.value == first.action
        assert f"permission {permissions.index(first)} " in decision.reason
