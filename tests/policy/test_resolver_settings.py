"""A service-resolver's ConnectTimeout, RequestTimeout, LoadBalancer, Redirect and
Failover, validated as Consul's ServiceResolverConfigEntry.Validate does, each problem
naming its key."""

from __future__ import annotations

import pytest

from gwcore.policy.model import Destination, ServiceName
from gwcore.policy.resolver_entry import apply_settings, parse_resolver


def parse(**fields):
    return parse_resolver({"Kind": "service-resolver", "Name": "s2", **fields}, "r.hcl", "[0]")


def test_settings_are_read_and_applied_to_the_destination():
    """ConnectTimeout (a Go duration or nanoseconds) becomes the destination's connect
    timeout; LoadBalancer its policy and ring sizes; /routes gets the entry's keys."""
    entry, problems = parse(
        ConnectTimeout="1.5s",
        RequestTimeout=2_000_000_000,
        LoadBalancer={"Policy": "ring_hash",
                      "RingHashConfig": {"MinimumRingSize": 10, "MaximumRingSize": 99},
                      "HashPolicies": [{"SourceIP": True}]},
        Failover={"*": {"Datacenters": ["dc2"]}},
    )  # fmt: skip
    assert problems == [] and entry is not None
    assert entry.settings.request_timeout == 2.0
    (d,) = apply_settings([Destination(ServiceName("s2"), "dc1")], {entry.service: entry})
    assert d.connect_timeout == 1.5 and d.lb_policy == "ring_hash"
    assert (d.load_balancer.min_ring, d.load_balancer.max_ring) == (10, 99)
    assert d.load_balancer.hashes_source_ip
    assert set(d.resolver) == {"ConnectTimeout", "RequestTimeout", "LoadBalancer", "Failover"}
    entry, problems = parse(LoadBalancer={"Policy": "least_request",
                                          "LeastRequestConfig": {"ChoiceCount": 3}})  # fmt: skip
    assert problems == [] and entry is not None
    assert entry.settings.load_balancer.choice_count == 3


@pytest.mark.parametrize(
    ("fields", "where", "text"),
    [
        ({"ConnectTimeout": "soon"}, "[0].ConnectTimeout", "is not a duration"),
        ({"LoadBalancer": {"Policy": "fastest"}}, "[0].LoadBalancer.Policy", "not supported"),
        ({"LoadBalancer": {"Policy": "random", "RingHashConfig": {"MinimumRingSize": 3}}},
         "[0].LoadBalancer.RingHashConfig", "incompatible"),
        ({"LoadBalancer": {"Policy": "ring_hash",
                           "RingHashConfig": {"MinimumRingSize": 9, "MaximumRingSize": 3}}},
         "[0].LoadBalancer.RingHashConfig", "above MaximumRingSize"),
        ({"LoadBalancer": {"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 1}}},
         "[0].LoadBalancer.LeastRequestConfig.ChoiceCount", "at least 2"),
        ({"LoadBalancer": {"Policy": "round_robin", "HashPolicies": [{"SourceIP": True}]}},
         "[0].LoadBalancer.HashPolicies", "non-hash-based"),
        ({"LoadBalancer": {"Policy": "maglev",
                           "HashPolicies": [{"Field": "header", "SourceIP": True}]}},
         "[0].LoadBalancer.HashPolicies[0]", "both a source address"),
        ({"LoadBalancer": {"Policy": "maglev", "HashPolicies": [{"Field": "cookie"}]}},
         "[0].LoadBalancer.HashPolicies[0]", "without a FieldValue"),
        ({"LoadBalancer": {"Policy": "maglev", "HashPolicies": [
            {"Field": "cookie", "FieldValue": "id", "CookieConfig": {"Session": True, "TTL": "1m"}}
        ]}}, "[0].LoadBalancer.HashPolicies[0].CookieConfig", "session cookie cannot have"),
        ({"LoadBalancer": {"Policy": "maglev", "HashPolicies": [
            {"Field": "cookie", "FieldValue": "id", "CookieConfig": {"TTL": "soon"}}
        ]}}, "[0].LoadBalancer.HashPolicies[0].CookieConfig.TTL", "bad duration"),
        ({"Redirect": {}}, "[0].Redirect", "Redirect is empty"),
        ({"Redirect": {"ServiceSubset": "v1"}}, "[0].Redirect", "without Redirect.Service"),
        ({"Redirect": {"Service": "s3"}, "Failover": {"*": {"Datacenters": ["dc2"]}}},
         "[0].Redirect", "Redirect and Failover"),
        ({"Failover": {"*": {}}}, "[0].Failover.*", "is required"),
        ({"Failover": {"*": {"Datacenters": "dc2"}}}, "[0].Failover.*.Datacenters", "list"),
    ],
)  # fmt: skip
def test_bad_settings_are_problems_naming_the_key(fields, where, text):
    """Each rule of Consul's Validate: the entry is refused with a problem at its key."""
    entry, problems = parse(**fields)
    assert entry is None
    assert any(p.where == where and text in p.message for p in problems), problems


def test_cookie_config_says_whether_and_how_a_cookie_is_generated():
    """``CookieConfig`` as Consul hands it to Envoy: ``TTL`` generates a cookie with that
    Max-Age, ``Session`` a session cookie (ttl 0), neither none; ``Path`` is kept."""

    def policy(config):
        entry, problems = parse(LoadBalancer={"Policy": "ring_hash", "HashPolicies": [
            {"Field": "cookie", "FieldValue": "id", "CookieConfig": config}]})  # fmt: skip
        assert problems == [] and entry is not None
        (hashed,) = entry.settings.load_balancer.hash_policies
        return hashed.cookie_ttl, hashed.cookie_path

    assert policy({"TTL": "90s", "Path": "/app"}) == (90.0, "/app")
    assert policy({"Session": True}) == (0.0, "")
    assert policy({"Path": "/x"}) == (None, "/x")
