"""Tests for gwcore.policy.decision: deny-overrides combining and engine failures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.decision import combine, failure
from gwcore.policy.model import Decision, Verdict

ALLOW_A = Decision(Verdict.ALLOW, "a", "a allows")
ALLOW_B = Decision(Verdict.ALLOW, "b", "b allows")
DENY_A = Decision(Verdict.DENY, "a", "a denies")
DENY_B = Decision(Verdict.DENY, "b", "b denies")
ABSTAIN_A = Decision(Verdict.ABSTAIN, "a", "no rule for web")
ABSTAIN_B = Decision(Verdict.ABSTAIN, "b", "no intention matches")


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        pytest.param([ALLOW_A], ALLOW_A, id="single-allow"),
        pytest.param([DENY_A], DENY_A, id="single-deny"),
        pytest.param([ALLOW_A, DENY_B], DENY_B, id="later-deny-overrides-allow"),
        pytest.param([DENY_A, ALLOW_B], DENY_A, id="earlier-deny-overrides-allow"),
        pytest.param([DENY_A, DENY_B], DENY_A, id="first-deny-in-engine-order"),
        pytest.param([ALLOW_A, ALLOW_B], ALLOW_A, id="first-allow-in-engine-order"),
        pytest.param([ABSTAIN_A, ALLOW_B], ALLOW_B, id="abstain-then-allow"),
        pytest.param([ABSTAIN_A, DENY_B], DENY_B, id="abstain-then-deny"),
        pytest.param([ALLOW_A, ABSTAIN_B], ALLOW_A, id="allow-then-abstain"),
    ],
)
@pytest.mark.parametrize("default_policy", ["allow", "deny"])
def test_combine_when_an_engine_decides(
    decisions: list[Decision], expected: Decision, default_policy: str
) -> None:
    """Deny overrides, then the first allow; the default policy plays no part."""
    assert combine(decisions, default_policy) is expected


@pytest.mark.parametrize(
    ("default_policy", "verdict"), [("allow", Verdict.ALLOW), ("deny", Verdict.DENY)]
)
def test_combine_all_abstain_uses_default_policy(default_policy: str, verdict: Verdict) -> None:
    """When every engine abstains the default policy decides and the reasons are kept."""
    decision = combine([ABSTAIN_A, ABSTAIN_B], default_policy)
    assert decision == Decision(
        verdict,
        "default",
        "no engine decided (a: no rule for web; b: no intention matches); "
        f"default_policy={default_policy}",
    )


@pytest.mark.parametrize(
    ("default_policy", "verdict"), [("allow", Verdict.ALLOW), ("deny", Verdict.DENY)]
)
def test_combine_no_engines_uses_default_policy(default_policy: str, verdict: Verdict) -> None:
    """A stack without engines falls straight to the default policy, and says so."""
    decision = combine([], default_policy)
    assert decision.verdict is verdict
    assert decision.engine == "default"
    assert decision.reason == (
        f"no engine decided (no engines in the stack); default_policy={default_policy}"
    )


@pytest.mark.parametrize("default_policy", ["", "Deny", "permit"])
def test_combine_rejects_unknown_default_policy(default_policy: str) -> None:
    """An invalid default policy is an error, never silently allow or deny."""
    with pytest.raises(ValueError):
        combine([ALLOW_A], default_policy)


def test_failure_is_a_prefixed_deny() -> None:
    """An engine error or timeout denies, attributed to the engine, reason prefixed."""
    decision = failure("opa", "timed out after 5s")
    assert decision == Decision(Verdict.DENY, "opa", "engine error: timed out after 5s")
    assert not decision.allowed


def test_failure_overrides_other_engines_allow() -> None:
    """A failing engine cannot be outvoted by another engine's allow."""
    decision = combine([ALLOW_A, failure("opa", "boom")], "allow")
    assert decision.verdict is Verdict.DENY
    assert decision.engine == "opa"


decisions_st = st.lists(
    st.builds(
        Decision,
        st.sampled_from(list(Verdict)),
        st.sampled_from(["intentions", "opa", "custom"]),
        st.text(max_size=10),
    ),
    max_size=6,
)


@given(decisions_st, st.sampled_from(["allow", "deny"]))
def test_any_deny_means_deny(decisions: list[Decision], default_policy: str) -> None:
    """Whatever else the engines say, one deny makes the result a deny: the first one."""
    result = combine(decisions, default_policy)
    denies = [d for d in decisions if d.verdict is Verdict.DENY]
    if denies:
        assert result is denies[0]
    else:
        assert result.verdict is not Verdict.DENY or default_policy == "deny"


@given(decisions_st, st.sampled_from(["allow", "deny"]))
def test_result_never_abstains(decisions: list[Decision], default_policy: str) -> None:
    """combine always reaches a verdict; the default engine appears only if all abstained."""
    result = combine(decisions, default_policy)
    assert result.verdict is not Verdict.ABSTAIN
    all_abstained = all(d.verdict is Verdict.ABSTAIN for d in decisions)
    assert (result.engine == "default" and result not in decisions) == all_abstained
