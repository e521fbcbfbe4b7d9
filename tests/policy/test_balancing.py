"""Tests for gwcore.policy.balancing: health tiers and round robin endpoint order."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.balancing import EndpointPicker, health_tiers
from gwcore.policy.model import Destination, Endpoint, Health, ServiceName

P1 = Endpoint("10.0.0.1", 80)
P2 = Endpoint("10.0.0.2", 80)
P3 = Endpoint("10.0.0.3", 80)
W1 = Endpoint("10.0.1.1", 80, Health.WARNING)
W2 = Endpoint("10.0.1.2", 80, Health.WARNING)
C1 = Endpoint("10.0.2.1", 80, Health.CRITICAL)


def dest(*endpoints: Endpoint, name: str = "billing", dc: str = "dc1") -> Destination:
    return Destination(ServiceName(name), dc, endpoints)


@pytest.mark.parametrize(
    ("endpoints", "calls"),
    [
        pytest.param((), [[], []], id="no-endpoints"),
        pytest.param((C1,), [[], []], id="only-critical"),
        pytest.param((P1,), [[P1], [P1]], id="single-passing"),
        pytest.param(
            (P1, P2, P3),
            [[P1, P2, P3], [P2, P3, P1], [P3, P1, P2], [P1, P2, P3]],
            id="round-robin-passing",
        ),
        pytest.param(
            (W1, P1, C1, P2),
            [[P1, P2, W1], [P2, P1, W1], [P1, P2, W1]],
            id="passing-before-warning-critical-dropped",
        ),
        pytest.param((W1, W2), [[W1, W2], [W2, W1]], id="only-warning-still-served"),
        pytest.param(
            (P1, W1, P2, W2, P3),
            [[P1, P2, P3, W1, W2], [P2, P3, P1, W2, W1]],
            id="both-tiers-rotate",
        ),
    ],
)
def test_candidates_sequence(endpoints: tuple[Endpoint, ...], calls: list[list[Endpoint]]) -> None:
    """Successive calls rotate within each health tier; critical endpoints never appear."""
    picker = EndpointPicker()
    destination = dest(*endpoints)
    assert [picker.candidates(destination) for _ in calls] == calls


def test_counters_are_per_service() -> None:
    """Traffic to one service does not move another service's rotation."""
    picker = EndpointPicker()
    billing, payments = dest(P1, P2), dest(P1, P2, name="payments")
    assert picker.candidates(billing)[0] == P1
    assert picker.candidates(billing)[0] == P2
    assert picker.candidates(payments)[0] == P1


def test_counters_survive_a_new_snapshot_of_the_same_service() -> None:
    """A catalog refresh (a new Destination object) continues the rotation."""
    picker = EndpointPicker()
    assert picker.candidates(dest(P1, P2))[0] == P1
    assert picker.candidates(dest(P1, P2))[0] == P2


def test_unusable_destination_does_not_advance_rotation() -> None:
    """A call that returns nothing leaves the counter alone."""
    picker = EndpointPicker()
    assert picker.candidates(dest(C1)) == []
    assert picker.candidates(dest(P1, P2))[0] == P1


def test_two_pickers_are_independent_and_deterministic() -> None:
    """The order depends only on the calls made to that picker."""
    a, b = EndpointPicker(), EndpointPicker()
    destination = dest(P1, P2, P3, W1)
    assert [a.candidates(destination) for _ in range(5)] == [
        b.candidates(destination) for _ in range(5)
    ]


def test_health_tiers() -> None:
    """health_tiers keeps catalog order within each tier and drops critical endpoints."""
    assert health_tiers([W2, C1, P2, W1, P1]) == ([P2, P1], [W2, W1])


health = st.sampled_from(list(Health))
endpoint_lists = st.lists(
    st.builds(Endpoint, st.from_regex(r"\A10\.0\.0\.[0-9]{1,2}\Z"), st.integers(1, 65535), health),
    max_size=8,
    unique_by=lambda e: (e.address, e.port),
)


@given(endpoint_lists, st.integers(1, 20))
def test_candidates_invariants(endpoints: list[Endpoint], calls: int) -> None:
    """Every call returns each usable endpoint exactly once, passing ones first."""
    picker = EndpointPicker()
    destination = dest(*endpoints)
    usable = Counter(e for e in endpoints if e.health is not Health.CRITICAL)
    for _ in range(calls):
        order = picker.candidates(destination)
        assert Counter(order) == usable
        healths = [e.health for e in order]
        assert healths == sorted(healths, key=lambda h: h is Health.WARNING)


@given(endpoint_lists.filter(lambda es: any(e.health is Health.PASSING for e in es)))
def test_round_robin_spreads_first_choice_evenly(endpoints: list[Endpoint]) -> None:
    """Over one full cycle each passing endpoint is tried first exactly once."""
    picker = EndpointPicker()
    destination = dest(*endpoints)
    passing = [e for e in endpoints if e.health is Health.PASSING]
    firsts = Counter(picker.candidates(destination)[0] for _ in passing)
    assert firsts == Counter(passing)
