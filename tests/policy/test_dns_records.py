"""The sans-IO DNS rules: SRV ordering and endpoints, TTL clamping, serve-stale states."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.dns_records import (
    MAX_WEIGHT,
    Family,
    RefreshPolicy,
    ResolvedTarget,
    ServeStale,
    SrvRecord,
    Status,
    clamp_ttl,
    host_endpoints,
    scaled_weights,
    srv_endpoints,
    valid_hostname,
    weighted_order,
)
from gwcore.policy.model import Health

records = st.builds(
    SrvRecord,
    priority=st.integers(0, 3),
    weight=st.integers(0, 100),
    port=st.integers(1, 65535),
    target=st.sampled_from(["a.test", "b.test", "c.test", "d.test"]),
)


@given(st.lists(records, max_size=12), st.integers(0, 2**32))
def test_weighted_order_is_a_permutation_sorted_by_priority(recs, seed):
    """Every record comes out exactly once, lowest priority first (RFC 2782)."""
    out = weighted_order(recs, random.Random(seed))
    assert sorted(out) == sorted(recs)
    assert [r.priority for r in out] == sorted(r.priority for r in recs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 100), st.integers(1, 100), st.integers(0, 2**32))
def test_weighted_order_picks_first_in_proportion_to_weight(w1, w2, seed):
    """Within one priority, the first pick follows the weights, within 5 standard deviations
    of RFC 2782's exact probability (w1 + 1) / (w1 + w2 + 1)."""
    first = SrvRecord(0, w1, 1, "a.test")
    second = SrvRecord(0, w2, 2, "b.test")
    rng = random.Random(seed)
    n = 2000
    hits = sum(weighted_order([first, second], rng)[0] == first for _ in range(n))
    p = (w1 + 1) / (w1 + w2 + 1)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) <= 5 * sigma + 1


def test_weighted_order_gives_zero_weight_a_small_chance():
    """A weight-0 record beside a weight-99 one comes first about 1 time in 100."""
    zero, heavy = SrvRecord(0, 0, 1, "z.test"), SrvRecord(0, 99, 2, "h.test")
    rng = random.Random(1)
    hits = sum(weighted_order([heavy, zero], rng)[0] == zero for _ in range(5000))
    assert 10 <= hits <= 110


@given(
    st.floats(allow_nan=False, allow_infinity=True, min_value=0),
    st.floats(0.01, 100),
    st.floats(0, 1000),
)
def test_clamp_ttl_stays_within_floor_and_ceiling(ttl, floor, extra):
    """A clamped TTL is never below the floor nor above the ceiling, and is the TTL
    itself when it already lies between them."""
    ceiling = floor + extra
    got = clamp_ttl(ttl, floor, ceiling)
    assert floor <= got <= ceiling
    if floor <= ttl <= ceiling:
        assert got == ttl


def test_clamp_ttl_of_zero_and_nan_is_the_floor():
    """TTL 0 (do not cache) and a missing TTL both mean: ask again after the floor."""
    assert clamp_ttl(0, 0.2, 10) == 0.2
    assert clamp_ttl(math.nan, 0.2, 10) == 0.2


@given(st.lists(st.integers(0, 65535), min_size=1, max_size=10))
def test_scaled_weights_fit_consul_range_and_keep_order(weights):
    """Endpoint weights are 1..128 and never invert the order of the SRV weights."""
    scaled = scaled_weights(weights)
    assert all(1 <= w <= MAX_WEIGHT for w in scaled)
    pairs = list(zip(weights, scaled, strict=True))
    for a, sa in pairs:
        for b, sb in pairs:
            if a < b:
                assert sa <= sb


def test_srv_endpoints_tier_by_priority_and_carry_weights():
    """The lowest priority is passing, every higher one warning; weights and ports kept;
    a target without addresses and the "." target give no endpoint."""
    targets = [
        ResolvedTarget(SrvRecord(20, 5, 7002, "c.test"), ("10.0.0.3",)),
        ResolvedTarget(SrvRecord(10, 60, 7000, "a.test"), ("10.0.0.1", "::1")),
        ResolvedTarget(SrvRecord(10, 40, 7001, "b.test"), ("10.0.0.2",)),
        ResolvedTarget(SrvRecord(10, 40, 7003, "gone.test"), ()),
        ResolvedTarget(SrvRecord(5, 0, 0, "."), ()),
    ]
    got = [(e.address, e.port, e.health, e.weight) for e in srv_endpoints(targets)]
    assert got == [
        ("10.0.0.1", 7000, Health.PASSING, 60),
        ("::1", 7000, Health.PASSING, 60),
        ("10.0.0.2", 7001, Health.PASSING, 40),
        ("10.0.0.3", 7002, Health.WARNING, 5),
    ]


@given(st.permutations(range(4)))
def test_srv_endpoints_do_not_depend_on_answer_order(order):
    """An unchanged answer in another order builds identical endpoints (no route churn)."""
    base = [
        ResolvedTarget(SrvRecord(1, 10, 1, "a.test"), ("10.0.0.1",)),
        ResolvedTarget(SrvRecord(1, 20, 2, "b.test"), ("10.0.0.2", "10.0.0.9")),
        ResolvedTarget(SrvRecord(2, 10, 3, "c.test"), ("10.0.0.3",)),
        ResolvedTarget(SrvRecord(1, 10, 4, "d.test"), ("::5",)),
    ]
    assert srv_endpoints([base[i] for i in order]) == srv_endpoints(base)


def test_host_endpoints_one_per_distinct_address():
    got = host_endpoints("db.test", ["10.0.0.2", "10.0.0.1", "10.0.0.2", "::1"], 5432)
    assert [str(e) for e in got] == ["10.0.0.1:5432", "10.0.0.2:5432", "[::1]:5432"]
    assert all(e.health is Health.PASSING and e.node == "db.test" for e in got)


@pytest.mark.parametrize(
    ("family", "v4", "v6", "expected"),
    [
        (Family.IPV4, ["1.1.1.1"], ["::1"], ("1.1.1.1",)),
        (Family.IPV6, ["1.1.1.1"], ["::1"], ("::1",)),
        (Family.BOTH, ["1.1.1.1"], ["::1"], ("1.1.1.1", "::1")),
        (Family.PREFER_IPV4, ["1.1.1.1"], ["::1"], ("1.1.1.1",)),
        (Family.PREFER_IPV4, [], ["::1"], ("::1",)),
        (Family.PREFER_IPV6, ["1.1.1.1"], ["::1"], ("::1",)),
        (Family.PREFER_IPV6, ["1.1.1.1"], [], ("1.1.1.1",)),
    ],
)
def test_family_selects_addresses(family, v4, v6, expected):
    """Restrictive families filter; preferring families fall back to the other one."""
    assert family.select(v4, v6) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("db.example.test", True),
        ("_ldap._tcp.example.test", True),
        ("billing.service.dc1.consul.", True),
        ("", False),
        ("a..b", False),
        ("a" * 64 + ".test", False),
        ("bad name.test", False),
    ],
)
def test_valid_hostname(name, ok):
    assert valid_hostname(name) is ok


POLICY = RefreshPolicy(min_ttl=1.0, max_ttl=100.0, max_stale=30.0)


def test_fresh_answer_refreshes_at_its_clamped_ttl():
    """A good answer is in force and asked again at its TTL, bounded by floor and ceiling."""
    state: ServeStale[str] = ServeStale(POLICY)
    step = state.answered(0.0, "v1", 20, empty=False)
    assert (step.value, step.status, step.changed, step.refresh_in) == (
        "v1",
        Status.FRESH,
        True,
        20,
    )
    assert state.answered(20.0, "v1", 0, empty=False).refresh_in == 1.0
    step = state.answered(21.0, "v1", 10_000, empty=False)
    assert step.refresh_in == 100.0 and not step.changed


def test_failures_serve_stale_until_max_stale_then_expire_once():
    """Failures after a good answer keep it (stale, counted) until good_until + max_stale;
    one retry lands on that deadline; then the answer expires, reported once."""
    state: ServeStale[str] = ServeStale(POLICY)
    state.answered(0.0, "v1", 10, empty=False)  # good until 10, stale deadline 40
    step = state.failed(10.0, "timeout")
    assert (step.value, step.status, step.event, step.refresh_in) == (
        "v1",
        Status.STALE,
        "stale",
        1,
    )
    assert state.failed(11.0, "timeout").event == ""
    assert state.failed(13.0, "timeout").refresh_in == 4.0  # backing off
    step = state.failed(38.0, "timeout")
    assert step.refresh_in == pytest.approx(2.0)  # the deadline, not the back-off
    step = state.failed(40.0, "timeout")
    assert (step.value, step.status, step.event, step.changed) == (
        None,
        Status.EXPIRED,
        "expired",
        True,
    )
    step = state.failed(45.0, "timeout")
    assert (step.value, step.status, step.event) == (None, Status.EXPIRED, "")
    step = state.answered(50.0, "v2", 10, empty=False)
    assert (step.value, step.status, step.event) == ("v2", Status.FRESH, "recovered")


def test_negative_answer_is_held_for_hold_nx_then_removed_not_served_for_max_stale():
    """RFC 8767: an authoritative negative answer (NODATA, NXDOMAIN) is not an outage. The
    answer in force is held for hold_nx from the first negative answer (not max_stale),
    asked again no later than the hold's end, then removed, reported once each way."""
    state: ServeStale[str] = ServeStale(RefreshPolicy(1.0, 100.0, max_stale=3600.0, hold_nx=5.0))
    state.answered(0.0, "v1", 10, empty=False)
    step = state.answered(10.0, "", 60, empty=True)
    assert (step.value, step.status, step.event, step.changed) == ("v1", Status.HELD, "held", False)
    assert step.refresh_in == 5.0  # the hold's end, before the 60 s negative TTL
    step = state.negative(12.0, None, 60)  # NXDOMAIN inside the hold: still held
    assert (step.value, step.status, step.event, step.refresh_in) == ("v1", Status.HELD, "", 3.0)
    step = state.negative(15.0, None, 60)
    assert (step.value, step.status, step.event, step.changed) == (
        None,
        Status.NEGATIVE,
        "removed",
        True,
    )
    assert step.refresh_in == 60.0  # RFC 2308: the negative TTL, clamped
    step = state.negative(75.0, None, 60)
    assert (step.status, step.event, step.changed) == (Status.NEGATIVE, "", False)
    step = state.answered(80.0, "v2", 10, empty=False)
    assert (step.value, step.status, step.event) == ("v2", Status.FRESH, "recovered")


def test_failure_during_a_hold_does_not_extend_it():
    """A timeout after an NXDOMAIN keeps the hold's end: the authority already answered."""
    state: ServeStale[str] = ServeStale(RefreshPolicy(1.0, 100.0, max_stale=3600.0, hold_nx=5.0))
    state.answered(0.0, "v1", 10, empty=False)
    state.negative(10.0, None, 0)
    assert state.failed(12.0, "timeout").status is Status.HELD
    step = state.failed(15.0, "timeout")
    assert (step.value, step.status, step.event) == (None, Status.NEGATIVE, "removed")


def test_negative_answer_before_first_success_uses_the_negative_ttl():
    """NXDOMAIN at start: nothing in force, asked again at the SOA negative TTL (clamped),
    not on the failure back-off."""
    state: ServeStale[str] = ServeStale(POLICY)
    step = state.negative(0.0, None, 7)
    assert (step.value, step.status, step.event, step.refresh_in) == (
        None,
        Status.NEGATIVE,
        "negative",
        7,
    )
    assert state.negative(7.0, None, 0).refresh_in == 1.0  # TTL 0: the floor
    step = state.answered(9.0, "", 3, empty=True)  # NODATA, also negative
    assert (step.value, step.status, step.refresh_in) == ("", Status.NEGATIVE, 3)


def test_zero_hold_nx_removes_on_the_first_negative_answer():
    state: ServeStale[str] = ServeStale(RefreshPolicy(1.0, 10.0, 3600.0, hold_nx=0.0))
    state.answered(0.0, "v1", 5, empty=False)
    assert state.negative(5.0, None, 5).status is Status.NEGATIVE


def test_first_failure_is_unresolved_and_retried_with_backoff():
    state: ServeStale[str] = ServeStale(POLICY)
    step = state.failed(0.0, "servfail")
    assert (step.value, step.status, step.event, step.refresh_in) == (
        None,
        Status.UNRESOLVED,
        "unresolved",
        1.0,
    )
    delays = [state.failed(float(i), "timeout").refresh_in for i in range(8)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_zero_max_stale_expires_on_the_first_failure():
    state: ServeStale[str] = ServeStale(RefreshPolicy(1.0, 10.0, 0.0))
    state.answered(0.0, "v1", 5, empty=False)
    assert state.failed(5.0, "servfail").status is Status.EXPIRED


def test_policy_rejects_floor_above_ceiling():
    with pytest.raises(ValueError):
        RefreshPolicy(min_ttl=10, max_ttl=1)
