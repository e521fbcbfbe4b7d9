"""A request's hash under a service-resolver's HashPolicies (gwcore.policy.request_hash),
rule by rule as Envoy's route hash policies evaluate them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.balancing import EndpointPicker, OutlierDetector
from gwcore.policy.lb import hash64
from gwcore.policy.model import Destination, Endpoint, HashPolicy, ServiceName
from gwcore.policy.request_hash import MASK, request_hash

HEADER = HashPolicy("header", "x-user")
COOKIE = HashPolicy("cookie", "sid")
QUERY = HashPolicy("query_parameter", "tenant")
SOURCE = HashPolicy(source_ip=True)


def value(policies, headers=(), target="/", address="10.0.0.1", port=4000):
    return request_hash(policies, list(headers), target, address, port).value


def test_each_field_yields_the_hash_of_its_value():
    """header (name without case), cookie, query parameter, source address."""
    assert value([HEADER], [("X-User", "ann")]) == hash64("ann")
    assert value([COOKIE], [("cookie", "a=1; sid=abc; b=2")]) == hash64("abc")
    assert value([COOKIE], [("cookie", 'sid="quoted"')]) == hash64("quoted")
    assert value([QUERY], target="/p?a=1&tenant=t%201&tenant=2") == hash64("t%201")
    assert value([SOURCE], address="192.0.2.7") == hash64("192.0.2.7")


@pytest.mark.parametrize(
    ("policies", "headers", "target"),
    [
        ([HEADER], [("x-other", "ann")], "/"),
        ([COOKIE], [("cookie", "sidx=1; xsid=2")], "/"),
        ([COOKIE], [("x-cookie", "sid=1")], "/"),
        ([QUERY], [], "/p?tenants=1&xtenant=2"),
        ([QUERY], [], "/p#tenant=1"),
        ([HEADER, COOKIE, QUERY], [], "/"),
    ],
)
def test_a_policy_without_its_value_yields_nothing(policies, headers, target):
    """A request missing every hashed value has no hash (the balancer's default then)."""
    assert value(policies, headers, target) is None


def test_several_values_of_a_header_hash_together_in_any_order():
    """Envoy sorts a header's values before hashing: their order does not move the key."""
    one = value([HEADER], [("x-user", "b"), ("x-user", "a")])
    assert one == value([HEADER], [("x-user", "a"), ("X-USER", "b")])
    assert one != value([HEADER], [("x-user", "a")])


def test_hashes_combine_and_equal_policies_do_not_cancel():
    """Each new hash is folded into the one so far with a rotation: two policies on the
    same value give neither 0 nor the single hash; a policy with no value is skipped."""
    h = hash64("ann")
    both = value([HEADER, HEADER], [("x-user", "ann")])
    assert both == (((h << 1) | (h >> 63)) & MASK) ^ h
    assert both not in (0, h)
    assert value([QUERY, HEADER], [("x-user", "ann")]) == h


def test_terminal_stops_once_a_hash_exists():
    """A Terminal policy that yields (or follows one that yielded) ends the walk; one
    that yields nothing after nothing does not."""
    terminal_header = HashPolicy("header", "x-user", terminal=True)
    headers = [("x-user", "ann")]
    assert value([terminal_header, SOURCE], headers) == hash64("ann")
    assert value([terminal_header, SOURCE], []) == hash64("10.0.0.1")
    assert value([SOURCE, terminal_header, QUERY], headers, "/?tenant=t") == value(
        [SOURCE, HEADER], headers
    )


def test_a_cookie_is_generated_only_with_cookie_config():
    """Without the cookie and with a TTL (or Session) the request hashes on a generated
    value that the response must set; without CookieConfig nothing is generated."""
    ttl = HashPolicy("cookie", "sid", cookie_ttl=3600.0, cookie_path="/app")
    result = request_hash([ttl], [], "/", "10.0.0.1", 4000)
    generated = f"{hash64('10.0.0.1:4000'):016x}"
    assert result.value == hash64(generated)
    assert result.set_cookie == f"sid={generated}; Max-Age=3600; Path=/app; HttpOnly"
    session = request_hash([HashPolicy("cookie", "sid", cookie_ttl=0.0)], [], "/", "h", 1)
    assert session.set_cookie.endswith("; HttpOnly") and "Max-Age" not in session.set_cookie
    sent = request_hash([ttl], [("cookie", f"sid={generated}")], "/", "10.9.9.9", 1)
    assert (sent.value, sent.set_cookie) == (result.value, "")
    assert request_hash([COOKIE], [], "/", "10.0.0.1", 4000).set_cookie == ""


@given(
    st.lists(st.tuples(st.sampled_from(["x-user", "X-User", "other"]), st.text(max_size=8))),
    st.randoms(use_true_random=False),
)
def test_header_hash_ignores_the_order_of_fields(fields, rng):
    """Property: shuffling the request's fields never moves its header hash (Envoy
    sorts the values), and fields of other names never take part."""
    shuffled = list(fields)
    rng.shuffle(shuffled)
    assert value([HEADER], fields) == value([HEADER], shuffled)
    only = [(k, v) for k, v in fields if k.lower() == "x-user"]
    assert value([HEADER], fields) == value([HEADER], only)


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_an_ejected_endpoint_moves_only_its_own_request_hashes(policy):
    """Request hashes (int keys) through the picker: with one of five endpoints ejected
    by outlier detection, its hashes go to other endpoints (never to it) and at least
    80% of the others stay where they were (consistent hashing; as in Envoy, the ring
    is rebuilt over the endpoints left and its minimum size spreads over fewer of
    them, so some move: 11% here with ring_hash, none with maglev)."""
    endpoints = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(5))
    destination = Destination(ServiceName("billing"), "dc1", endpoints, lb_policy=policy)
    picker = EndpointPicker(OutlierDetector(consecutive=1, base=30.0))
    keys = [hash64(f"user-{i}") for i in range(400)]
    before = {k: picker.candidates(destination, 0.0, key=k)[0] for k in keys}
    victim = endpoints[2]
    assert picker.failed(destination, victim, 1.0) is not None  # ejected
    after = {k: picker.candidates(destination, 2.0, key=k)[0] for k in keys}
    others = [k for k in keys if before[k] != victim]
    assert sum(after[k] == before[k] for k in others) >= 0.8 * len(others)
    assert victim not in after.values()
    assert sum(1 for k in keys if before[k] == victim) > 0
