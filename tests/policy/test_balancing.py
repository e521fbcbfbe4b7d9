"""Tests for gwcore.policy.balancing: health tiers and round robin endpoint order."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.balancing import EndpointPicker, OutlierDetector, health_tiers, policy_name
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
    """With health_order = "passing_first", successive calls rotate within each health
    tier; critical endpoints never appear."""
    picker = EndpointPicker()
    destination = dest(*endpoints)
    assert [picker.candidates(destination, passing_first=True) for _ in calls] == calls


def test_default_health_order_treats_warning_like_passing_as_consul() -> None:
    """By default (Consul's rule: a warning instance is healthy, with Weights.Warning)
    warning endpoints share the rotation with passing ones; critical ones never appear."""
    picker = EndpointPicker()
    destination = dest(W1, P1, C1, P2)
    orders = [picker.candidates(destination) for _ in range(3)]
    assert [o[0] for o in orders] == [W1, P1, P2]
    assert all(sorted(map(str, o)) == sorted(map(str, (W1, P1, P2))) for o in orders)


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
        order = picker.candidates(destination, passing_first=True)
        assert Counter(order) == usable
        healths = [e.health for e in order]
        assert healths == sorted(healths, key=lambda h: h is Health.WARNING)


@given(endpoint_lists.filter(lambda es: any(e.health is Health.PASSING for e in es)))
def test_round_robin_spreads_first_choice_evenly(endpoints: list[Endpoint]) -> None:
    """Over one full cycle each passing endpoint is tried first exactly once."""
    picker = EndpointPicker()
    destination = dest(*endpoints)
    passing = [e for e in endpoints if e.health is Health.PASSING]
    firsts = Counter(picker.candidates(destination, passing_first=True)[0] for _ in passing)
    assert firsts == Counter(passing)


# --- weights, policies and outlier ejection ------------------------------------------


def _dest(*endpoints: Endpoint, policy: str = "round_robin") -> Destination:
    return Destination(ServiceName("billing"), "dc1", endpoints=endpoints, lb_policy=policy)


def _first_choices(picker: EndpointPicker, dest: Destination, n: int) -> Counter:
    return Counter(picker.candidates(dest)[0].address for _ in range(n))


def test_weighted_round_robin_gives_first_choices_in_proportion_to_weights():
    """Smooth weighted round robin: weights 1:3 give exactly 1:3 first picks, interleaved."""
    dest = _dest(Endpoint("a", 1, weight=1), Endpoint("b", 1, weight=3))
    picker = EndpointPicker()
    firsts = [picker.candidates(dest)[0].address for _ in range(400)]
    assert Counter(firsts) == {"a": 100, "b": 300}
    # never more than three b's in a row: no bursts
    assert "bbbb" not in "".join(firsts)


def test_every_candidate_list_is_a_permutation_of_the_usable_endpoints():
    """Policies only reorder: nothing usable is dropped, nothing is repeated."""
    dest = _dest(
        Endpoint("a", 1, weight=2), Endpoint("b", 1), Endpoint("c", 1, health=Health.CRITICAL)
    )
    for policy in ("round_robin", "least_request", "random"):
        picker = EndpointPicker(rng=random.Random(1))
        for _ in range(10):
            got = picker.candidates(_dest(*dest.endpoints, policy=policy))
            assert sorted(e.address for e in got) == ["a", "b"]


def test_least_request_prefers_the_endpoint_with_fewer_open_connections_per_weight():
    """least_request: open connections divided by weight decide the first choice."""
    a, b = Endpoint("a", 1, weight=1), Endpoint("b", 1, weight=2)
    dest = _dest(a, b, policy="least_request")
    picker = EndpointPicker()
    picker.opened(dest, b)
    picker.opened(dest, b)  # b: 2 open / weight 2 = 1.0
    picker.opened(dest, a)  # a: 1 open / weight 1 = 1.0 -> tie, rotation decides
    picker.opened(dest, a)  # a: 2.0 -> b first
    assert picker.candidates(dest)[0] == b
    picker.closed(dest, a)
    picker.closed(dest, a)  # a: 0 -> a first
    assert picker.candidates(dest)[0] == a
    assert picker.active(dest, a) == 0 and picker.active(dest, b) == 2


def test_weighted_random_stays_within_a_statistical_bound():
    """random: first picks follow the weights (1:3) within a generous bound."""
    dest = _dest(Endpoint("a", 1, weight=1), Endpoint("b", 1, weight=3), policy="random")
    tally = _first_choices(EndpointPicker(rng=random.Random(42)), dest, 4000)
    assert 0.20 < tally["a"] / 4000 < 0.30


def test_policy_names_accept_consul_names_and_the_alias():
    assert policy_name("least_connections") == "least_request"
    assert policy_name("") == "round_robin"
    assert policy_name("maglev") is None


def test_consecutive_failures_eject_and_the_ejection_grows_on_repeat():
    """N consecutive failures eject for base seconds, then 2x base on the next ejection."""
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    dest = _dest(a, b)
    picker = EndpointPicker(OutlierDetector(consecutive=3, base=10, maximum=100))
    assert picker.failed(dest, a, now=0) is None
    assert picker.failed(dest, a, now=0) is None
    assert picker.failed(dest, a, now=0) == 10
    assert [e.address for e in picker.candidates(dest, now=5)] == ["b"]
    assert {e.address for e in picker.candidates(dest, now=11)} == {"a", "b"}  # back
    for _ in range(3):
        ejected = picker.failed(dest, a, now=12)
    assert ejected == 20


def test_a_success_resets_the_failure_count():
    a, b = Endpoint("a", 1), Endpoint("b", 1)
    dest = _dest(a, b)
    picker = EndpointPicker(OutlierDetector(consecutive=2, base=10))
    picker.failed(dest, a, now=0)
    picker.succeeded(dest, a)
    assert picker.failed(dest, a, now=0) is None


def test_the_last_usable_endpoint_is_never_ejected():
    """Ejection never leaves a destination with nothing to try."""
    a, b = Endpoint("a", 1), Endpoint("b", 1, health=Health.CRITICAL)
    dest = _dest(a, b)
    picker = EndpointPicker(OutlierDetector(consecutive=1, base=10))
    for _ in range(5):
        assert picker.failed(dest, a, now=0) is None
    assert picker.candidates(dest, now=1) == [a]


@given(
    st.lists(st.integers(min_value=1, max_value=128), min_size=1, max_size=6), st.integers(0, 50)
)
def test_round_robin_first_choices_track_weights_over_a_full_cycle(weights, warmup):
    """Property: any window of sum(weights) first picks has each endpoint `weight` times."""
    dest = _dest(*(Endpoint(f"e{i}", 1, weight=w) for i, w in enumerate(weights)))
    picker = EndpointPicker()
    for _ in range(warmup):
        picker.candidates(dest)
    tally = _first_choices(picker, dest, sum(weights))
    assert tally == {f"e{i}": w for i, w in enumerate(weights)}
