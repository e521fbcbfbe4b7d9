"""Consistent hashing and power-of-choices (gwcore.policy.lb) and a service-resolver's
LoadBalancer applied by the EndpointPicker."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.balancing import EndpointPicker
from gwcore.policy.lb import Maglev, Member, Ring, power_of_choices
from gwcore.policy.model import Destination, Endpoint, LoadBalancer, ServiceName

KEYS = [f"spiffe://td/ns/default/dc/dc1/svc/client-{i}" for i in range(2000)]
names = st.lists(st.from_regex(r"\A10\.0\.[0-9]\.[0-9]{1,3}:[0-9]{2,4}\Z"), min_size=10,
                 max_size=10, unique=True)  # fmt: skip


def owners(table: Ring | Maglev, members: list[Member]) -> dict[str, str]:
    return {k: members[table.order(k)[0]].name for k in KEYS}


def kept_share(build, ten: list[str], leaving: int) -> float:
    """The share of the keys whose endpoint is still there that stay on it."""
    members = [Member(n) for n in ten]
    before = owners(build(members), members)
    rest = [m for i, m in enumerate(members) if i != leaving]
    after = owners(build(rest), rest)
    staying = [k for k in KEYS if before[k] != ten[leaving]]
    assert len(staying) > 0.8 * len(KEYS)  # the leaver owned about a tenth of the keys
    return sum(after[k] == before[k] for k in staying) / len(staying)


def ring(members: list[Member]) -> Ring:
    return Ring(members, 1024, 8 * 1024 * 1024)


@settings(max_examples=8, deadline=None)
@given(names, st.integers(0, 9))
def test_ring_hash_keeps_90_percent_of_keys_when_one_of_ten_leaves(ten, leaving):
    """ring_hash: with ten equal endpoints, removing one keeps every key whose endpoint
    is still there on that endpoint (only the leaver's keys move)."""
    assert kept_share(ring, ten, leaving) == 1.0


@settings(max_examples=3, deadline=None)
@given(names, st.integers(0, 9))
def test_maglev_keeps_90_percent_of_keys_when_one_of_ten_leaves(ten, leaving):
    """maglev: removing one of ten equal endpoints keeps >= 90% of the keys whose
    endpoint is still there in place (Maglev trades a little disruption for balance)."""
    assert kept_share(Maglev, ten, leaving) >= 0.9


def test_hashing_is_stable_and_spreads_by_weight():
    """The same key always lands on the same endpoint (any process, any order of calls);
    a weight-3 endpoint owns about three times the keys of a weight-1 one."""
    members = [Member("a", 1), Member("b", 3)]
    for table in (Ring(members, 1024, 1 << 20), Maglev(members)):
        first = owners(table, members)
        assert owners(type(table)(members, *((1024, 1 << 20) if isinstance(table, Ring) else ())),
                      members) == first  # fmt: skip
        share = Counter(first.values())
        assert 2.4 < share["b"] / share["a"] < 3.8
        assert sorted(table.order("k")) == [0, 1]


def test_ring_size_follows_minimum_and_maximum():
    """160 points per endpoint of equal weight, raised to MinimumRingSize, capped at
    MaximumRingSize."""
    members = [Member(str(i)) for i in range(4)]
    assert len(Ring(members, 64, 1 << 20)) == 4 * 160
    assert len(Ring(members, 4000, 1 << 20)) == 4000
    assert len(Ring(members, 64, 100)) == 100
    assert len(Ring([Member("a", 1), Member("b", 100)], 1024, 2000)) <= 2001


def test_power_of_choices_picks_the_least_loaded_of_the_drawn():
    """ChoiceCount = n draws everyone, so the least loaded is always first; with 2 of 3
    the most loaded is never first."""
    loads = [5.0, 1.0, 9.0]
    rng = random.Random(1)
    assert {power_of_choices(3, loads.__getitem__, 3, rng)[0] for _ in range(50)} == {1}
    firsts = {power_of_choices(2, loads.__getitem__, 3, rng)[0] for _ in range(200)}
    assert firsts == {0, 1}


def test_picker_hashes_the_connection_key_for_a_resolver_policy():
    """A destination with LoadBalancer ring_hash (or maglev): the same key gets the same
    endpoint first on every connection; different keys spread over the endpoints."""
    eps = tuple(Endpoint(f"10.0.0.{i}", 80) for i in range(1, 6))
    for policy in ("ring_hash", "maglev"):
        d = Destination(ServiceName("s"), "dc1", eps, lb_policy=policy,
                        load_balancer=LoadBalancer(policy))  # fmt: skip
        picker = EndpointPicker()
        firsts = {picker.candidates(d, key="spiffe://td/x")[0] for _ in range(10)}
        assert len(firsts) == 1
        spread = {picker.candidates(d, key=k)[0] for k in KEYS[:200]}
        assert spread == set(eps)
