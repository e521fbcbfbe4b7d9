"""Tests for gwcore.policy.intentions: Consul's precedence table and first-match evaluation."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gwcore.policy.intentions import IntentionSet, precedence
from gwcore.policy.l7_permissions import HttpPermission, permission_from_mapping
from gwcore.policy.model import Intention, ServiceName, Verdict

ORIGIN = "/etc/tgw/intentions.json"


def svc(spec: str) -> ServiceName:
    """'web', 'team/web' or 'ap1/team/web' as a ServiceName."""
    parts = spec.split("/")
    if len(parts) == 1:
        return ServiceName(parts[0])
    if len(parts) == 2:
        return ServiceName(parts[1], parts[0])
    return ServiceName(parts[2], parts[1], parts[0])


def intention(src: str, dst: str, action: str = "allow", **kw: object) -> Intention:
    return Intention(svc(src), svc(dst), action, origin=kw.pop("origin", ORIGIN), **kw)  # type: ignore[arg-type]


L7 = (HttpPermission.build("allow", path_prefix="/admin"),)


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        pytest.param("ns/web", "ns/billing", 9, id="exact-exact"),
        pytest.param("ns/*", "ns/billing", 8, id="src-name-wild"),
        pytest.param("*/*", "ns/billing", 7, id="src-all-wild"),
        pytest.param("ns/web", "ns/*", 6, id="dst-name-wild"),
        pytest.param("ns/*", "ns/*", 5, id="both-name-wild"),
        pytest.param("*/*", "ns/*", 4, id="src-all-wild-dst-name-wild"),
        pytest.param("ns/web", "*/*", 3, id="dst-all-wild"),
        pytest.param("ns/*", "*/*", 2, id="src-name-wild-dst-all-wild"),
        pytest.param("*/*", "*/*", 1, id="all-wild"),
    ],
)
def test_precedence_table(src: str, dst: str, expected: int) -> None:
    """precedence() reproduces the 9 rows of Consul's table."""
    assert precedence(intention(src, dst)) == expected


def test_precedence_ignores_action_and_permissions() -> None:
    """Precedence depends on the shape of source and destination only."""
    assert precedence(intention("web", "billing", "deny")) == 9
    assert precedence(intention("web", "billing", "", permissions=L7)) == 9


# (intentions, source, destination, verdict, number of the intention that decides or None)
CE_SET = [
    intention("web", "billing", "allow"),  # 9
    intention("*", "billing", "deny"),  # 8
    intention("web", "*", "deny"),  # 6
    intention("*", "*", "allow"),  # 5
]


@pytest.mark.parametrize(
    ("intentions", "source", "destination", "verdict", "winner"),
    [
        # The case: a specific deny beside a wildcard allow.
        pytest.param(
            [intention("web", "billing", "deny"), intention("*", "billing", "allow")],
            "web",
            "billing",
            Verdict.DENY,
            0,
            id="issue-web-denied",
        ),
        pytest.param(
            [intention("web", "billing", "deny"), intention("*", "billing", "allow")],
            "api",
            "billing",
            Verdict.ALLOW,
            1,
            id="issue-api-allowed",
        ),
        # The mirror image: a more specific allow beats a broader deny.
        pytest.param(
            [intention("*", "billing", "deny"), intention("web", "billing", "allow")],
            "web",
            "billing",
            Verdict.ALLOW,
            1,
            id="specific-allow-beats-wildcard-deny",
        ),
        # CE rows 9, 8, 6, 5 each decide one pair.
        pytest.param(CE_SET, "web", "billing", Verdict.ALLOW, 0, id="ce-row-9"),
        pytest.param(CE_SET, "api", "billing", Verdict.DENY, 1, id="ce-row-8"),
        pytest.param(CE_SET, "web", "payments", Verdict.DENY, 2, id="ce-row-6"),
        pytest.param(CE_SET, "api", "payments", Verdict.ALLOW, 3, id="ce-row-5"),
        # Wildcard destination.
        pytest.param(
            [intention("web", "*", "allow")], "web", "anything", Verdict.ALLOW, 0, id="wild-dst"
        ),
        pytest.param(
            [intention("web", "*", "allow")],
            "api",
            "anything",
            Verdict.ABSTAIN,
            None,
            id="wild-dst-other-source",
        ),
        pytest.param(
            [intention("web", "*", "allow")],
            "web",
            "team/billing",
            Verdict.ABSTAIN,
            None,
            id="wild-dst-name-keeps-namespace",
        ),
        pytest.param(
            [intention("web", "*/*", "allow")],
            "web",
            "team/billing",
            Verdict.ALLOW,
            0,
            id="wild-dst-namespace",
        ),
        # Namespaces (rows 7, 4, 3, 2, 1).
        pytest.param(
            [intention("*/*", "team/billing", "deny"), intention("ops/*", "team/billing", "allow")],
            "ops/tool",
            "team/billing",
            Verdict.ALLOW,
            1,
            id="ns-row-8-beats-7",
        ),
        pytest.param(
            [intention("*/*", "team/billing", "deny"), intention("ops/*", "team/billing", "allow")],
            "dev/tool",
            "team/billing",
            Verdict.DENY,
            0,
            id="ns-row-7",
        ),
        pytest.param(
            [intention("*/*", "*/*", "deny"), intention("ops/web", "*/*", "allow")],
            "ops/web",
            "x/y",
            Verdict.ALLOW,
            1,
            id="ns-row-3-beats-1",
        ),
        pytest.param(
            [intention("*/*", "team/*", "allow"), intention("ops/*", "*/*", "deny")],
            "ops/web",
            "team/api",
            Verdict.ALLOW,
            0,
            id="ns-row-4-beats-2",
        ),
        # L7 intentions deny on L4 connections, even when their permissions would allow.
        pytest.param(
            [intention("web", "billing", "", permissions=L7), intention("*", "billing", "allow")],
            "web",
            "billing",
            Verdict.DENY,
            0,
            id="l7-denies",
        ),
        pytest.param(
            [intention("web", "billing", "", permissions=L7), intention("*", "billing", "allow")],
            "api",
            "billing",
            Verdict.ALLOW,
            1,
            id="l7-does-not-affect-other-sources",
        ),
        # No match abstains.
        pytest.param([], "web", "billing", Verdict.ABSTAIN, None, id="empty-set"),
        pytest.param(
            [intention("web", "billing", "allow")],
            "api",
            "billing",
            Verdict.ABSTAIN,
            None,
            id="other-source",
        ),
        pytest.param(
            [intention("web", "billing", "allow")],
            "web",
            "payments",
            Verdict.ABSTAIN,
            None,
            id="other-destination",
        ),
        pytest.param(
            [intention("web", "billing", "allow")],
            "team/web",
            "billing",
            Verdict.ABSTAIN,
            None,
            id="other-source-namespace",
        ),
        pytest.param(
            [intention("*", "billing", "allow")],
            "ap1/default/web",
            "billing",
            Verdict.ABSTAIN,
            None,
            id="other-source-partition",
        ),
        pytest.param(
            [intention("*/*", "*/*", "allow")],
            "web",
            "ap1/default/billing",
            Verdict.ABSTAIN,
            None,
            id="other-destination-partition",
        ),
        pytest.param(
            [intention("ap1/default/web", "ap1/default/billing", "deny")],
            "ap1/default/web",
            "ap1/default/billing",
            Verdict.DENY,
            0,
            id="same-partition",
        ),
        # Equal-precedence conflict (e.g. two catalog sources): deny wins either way round.
        pytest.param(
            [intention("web", "billing", "allow"), intention("web", "billing", "deny")],
            "web",
            "billing",
            Verdict.DENY,
            1,
            id="tie-deny-first-listed-second",
        ),
        pytest.param(
            [intention("web", "billing", "deny"), intention("web", "billing", "allow")],
            "web",
            "billing",
            Verdict.DENY,
            0,
            id="tie-deny-first-listed-first",
        ),
        # An action the parser should have rejected fails closed.
        pytest.param(
            [intention("web", "billing", "Allow")],
            "web",
            "billing",
            Verdict.DENY,
            0,
            id="unknown-action-denies",
        ),
    ],
)
def test_decide(
    intentions: list[Intention],
    source: str,
    destination: str,
    verdict: Verdict,
    winner: int | None,
) -> None:
    """The highest-precedence matching intention decides; no match abstains."""
    decision = IntentionSet(intentions).decide(svc(source), svc(destination))
    assert decision.engine == "intentions"
    assert decision.verdict is verdict
    if winner is None:
        assert decision.reason.startswith("no intention matches")
    else:
        chosen = intentions[winner]
        assert decision.reason.startswith(f"matched intention {chosen},")
        assert f"precedence {precedence(chosen)}" in decision.reason


def test_decide_reason_names_intention_precedence_and_origin() -> None:
    """The reason says which intention matched, its precedence and where it came from."""
    decision = IntentionSet([intention("web", "billing", "deny")]).decide(
        svc("web"), svc("billing")
    )
    assert decision.reason == (
        "matched intention default/web => default/billing (deny), precedence 9, "
        "from /etc/tgw/intentions.json"
    )


def test_each_intention_builds_its_decision_once() -> None:
    """Every connection matching the same intention gets the same Decision object (its
    reason is formatted once per IntentionSet), and another intention its own."""
    rules = IntentionSet([intention("web", "billing", "allow"), intention("*", "billing", "deny")])
    first = rules.decide(svc("web"), svc("billing"))
    assert rules.decide(svc("web"), svc("billing")) is first
    other = rules.decide(svc("api"), svc("billing"))
    assert other.verdict is Verdict.DENY and other is not first
    assert rules.decide(svc("api"), svc("billing")) is other


def test_decide_reason_without_origin() -> None:
    """An intention with no recorded origin gives a reason without a 'from' clause."""
    decision = IntentionSet([intention("web", "billing", origin="")]).decide(
        svc("web"), svc("billing")
    )
    assert (
        decision.reason == "matched intention default/web => default/billing (allow), precedence 9"
    )


def test_l7_reason_explains_the_deny() -> None:
    """An L7 intention's deny says why, so an operator does not hunt for a deny rule."""
    decision = IntentionSet([intention("web", "billing", "", permissions=L7)]).decide(
        svc("web"), svc("billing")
    )
    assert decision.verdict is Verdict.DENY
    assert "L7 intentions deny on L4 connections" in decision.reason


def test_abstain_reason_names_the_pair() -> None:
    """An abstain says which pair found no intention."""
    decision = IntentionSet([]).decide(svc("web"), svc("team/billing"))
    assert decision.reason == "no intention matches default/web => team/billing"


def test_empty_source_name_is_not_matched_by_wildcards() -> None:
    """An identity without a service name (a mesh gateway) is never a wildcard's source."""
    decision = IntentionSet([intention("*/*", "*/*", "allow")]).decide(
        ServiceName(""), svc("billing")
    )
    assert decision.verdict is Verdict.ABSTAIN


def test_len_and_iteration_order() -> None:
    """len() counts intentions; iteration is most specific first."""
    shuffled = [CE_SET[3], CE_SET[1], CE_SET[0], CE_SET[2]]
    intentions = IntentionSet(shuffled)
    assert len(intentions) == 4
    assert [precedence(i) for i in intentions] == [9, 8, 6, 5]


def test_version_is_order_independent_and_content_sensitive() -> None:
    """Equal content gives equal versions; any change of content changes the version."""
    a = IntentionSet(CE_SET)
    b = IntentionSet(reversed(CE_SET))
    assert a.version == b.version
    assert a.version != IntentionSet(CE_SET[:3]).version
    changed = [*CE_SET[:3], intention("*", "*", "deny")]
    assert a.version != IntentionSet(changed).version
    moved = [*CE_SET[:3], intention("*", "*", "allow", origin="/other.json")]
    assert a.version != IntentionSet(moved).version
    l7_a = IntentionSet([intention("web", "billing", "", permissions=L7)])
    l7_b = IntentionSet(
        [
            intention(
                "web",
                "billing",
                "",
                permissions=(HttpPermission.build("deny", path_prefix="/admin"),),
            )
        ]
    )
    assert l7_a.version != l7_b.version
    assert IntentionSet([]).version == IntentionSet(()).version


def test_version_ignores_permission_key_order() -> None:
    """Permissions that differ only in mapping key order are the same content."""
    first = {"Action": "allow", "HTTP": {"PathPrefix": "/a", "Methods": ["GET"]}}
    second = {"HTTP": {"Methods": ["GET"], "PathPrefix": "/a"}, "Action": "allow"}
    one = intention("web", "billing", "", permissions=(permission_from_mapping(first),))
    two = intention("web", "billing", "", permissions=(permission_from_mapping(second),))
    assert IntentionSet([one]).version == IntentionSet([two]).version


# --- properties -------------------------------------------------------------------------

names = st.sampled_from(["web", "api", "billing", "*"])
namespaces = st.sampled_from(["default", "team", "*"])


@st.composite
def service_patterns(draw: st.DrawFn) -> ServiceName:
    namespace = draw(namespaces)
    # A wildcard namespace requires a wildcard name (the parser enforces it).
    name = "*" if namespace == "*" else draw(names)
    return ServiceName(name, namespace)


exact_names = st.sampled_from(["web", "api", "billing"])
exact_namespaces = st.sampled_from(["default", "team"])
concrete = st.builds(ServiceName, exact_names, exact_namespaces)


@st.composite
def intentions_st(draw: st.DrawFn) -> Intention:
    kind = draw(st.sampled_from(["allow", "deny", "L7"]))
    if kind == "L7":
        return Intention(draw(service_patterns()), draw(service_patterns()), "", permissions=L7)
    return Intention(draw(service_patterns()), draw(service_patterns()), kind, origin="t")


def reference_match(
    intentions: list[Intention], source: ServiceName, destination: ServiceName
) -> Intention | None:
    """The naive reading of the rules: highest precedence among all matches."""

    def matches(pattern: ServiceName, service: ServiceName) -> bool:
        return pattern.namespace in ("*", service.namespace) and pattern.name in (
            "*",
            service.name,
        )

    found = [
        i for i in intentions if matches(i.source, source) and matches(i.destination, destination)
    ]
    if not found:
        return None
    best = max(precedence(i) for i in found)
    top = [i for i in found if precedence(i) == best]
    # Several at the top precedence can only disagree if one of them denies.
    deny = [i for i in top if i.action != "allow" or i.permissions]
    return (deny or top)[0]


@given(st.lists(intentions_st(), max_size=12), concrete, concrete)
def test_decide_agrees_with_reference(
    intentions: list[Intention], source: ServiceName, destination: ServiceName
) -> None:
    """The indexed decision equals the naive 'highest precedence match' reading."""
    decision = IntentionSet(intentions).decide(source, destination)
    expected = reference_match(intentions, source, destination)
    if expected is None:
        assert decision.verdict is Verdict.ABSTAIN
    else:
        allow = expected.action == "allow" and not expected.permissions
        assert decision.verdict is (Verdict.ALLOW if allow else Verdict.DENY)
        assert f"precedence {precedence(expected)}" in decision.reason


_DST_BAND = {"exact": 9, "name": 6, "all": 3}
_SRC_STEP = {"exact": 0, "name": 1, "all": 2}


def _pattern(kind: str, name: str, namespace: str) -> ServiceName:
    if kind == "all":
        return ServiceName("*", "*")
    return ServiceName("*" if kind == "name" else name, namespace)


def _concretise(pattern: ServiceName, service: ServiceName) -> ServiceName:
    return ServiceName(
        service.name if pattern.name == "*" else pattern.name,
        service.namespace if pattern.namespace == "*" else pattern.namespace,
    )


@given(
    st.lists(intentions_st(), min_size=1, max_size=10),
    concrete,
    concrete,
    st.data(),
)
def test_lower_precedence_intention_never_changes_a_matched_pair(
    intentions: list[Intention],
    some_source: ServiceName,
    some_destination: ServiceName,
    data: st.DataObject,
) -> None:
    """Adding an intention below the one that decides a pair leaves that decision alone."""
    # A pair the first intention matches, so the set is guaranteed to decide it.
    source = _concretise(intentions[0].source, some_source)
    destination = _concretise(intentions[0].destination, some_destination)
    matched = reference_match(intentions, source, destination)
    assert matched is not None
    lower = [
        (s, d)
        for d in _DST_BAND
        for s in _SRC_STEP
        if _DST_BAND[d] - _SRC_STEP[s] < precedence(matched)
    ]
    assume(lower)
    src_kind, dst_kind = data.draw(st.sampled_from(lower))
    extra = Intention(
        _pattern(src_kind, data.draw(exact_names), data.draw(exact_namespaces)),
        _pattern(dst_kind, data.draw(exact_names), data.draw(exact_namespaces)),
        data.draw(st.sampled_from(["allow", "deny"])),
    )
    assert precedence(extra) < precedence(matched)
    before = IntentionSet(intentions).decide(source, destination)
    after = IntentionSet([*intentions, extra]).decide(source, destination)
    assert after == before


@given(st.lists(intentions_st(), max_size=10), st.randoms(use_true_random=False))
def test_version_and_decisions_ignore_input_order(intentions: list[Intention], rnd) -> None:  # type: ignore[no-untyped-def]
    """A permutation of the same intentions has the same version and the same decisions."""
    shuffled = list(intentions)
    rnd.shuffle(shuffled)
    a, b = IntentionSet(intentions), IntentionSet(shuffled)
    assert a.version == b.version
    for source in (ServiceName("web"), ServiceName("api", "team")):
        for destination in (ServiceName("billing"), ServiceName("web", "team")):
            assert a.decide(source, destination) == b.decide(source, destination)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"source_peer": "other-cluster"}, id="peer-only"),
        pytest.param({"source_sameness_group": "group-a"}, id="sameness-group-only"),
    ],
)
def test_a_peer_or_sameness_group_source_alone_never_matches_a_local_caller(kw):
    """An intention whose source is in a cluster peer, or any member of a sameness group
    (each on its own, as Consul allows only one of them per source), names an identity
    tgw cannot verify: a local caller of the same name gets no decision from it."""
    intentions = IntentionSet([intention("web", "billing", "allow", **kw)])
    assert intentions.decide(svc("web"), svc("billing")).verdict is Verdict.ABSTAIN
