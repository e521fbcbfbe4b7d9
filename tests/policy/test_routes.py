"""Tests for gwcore.policy.routes: merging catalog snapshots and the SNI route table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.model import (
    CatalogSnapshot,
    Destination,
    Endpoint,
    Health,
    Intention,
    ServiceName,
    UpstreamTLS,
)
from gwcore.policy.routes import RouteTable, merge_snapshots
from gwcore.policy.sni import normalize_sni, service_sni

TD = "abcd.consul"

BILLING = Destination(ServiceName("billing"), "dc1", (Endpoint("10.0.0.1", 443),))
BILLING_OTHER = Destination(ServiceName("billing"), "dc1", (Endpoint("10.9.9.9", 443),))
PAYMENTS = Destination(ServiceName("payments"), "dc1", (Endpoint("10.0.0.2", 80),))
TEAM_BILLING = Destination(ServiceName("billing", "team"), "dc1")
AP_BILLING = Destination(ServiceName("billing", "ns", "ap1"), "dc1")
ALLOW = Intention(ServiceName("web"), ServiceName("billing"), "allow")
DENY = Intention(ServiceName("*"), ServiceName("billing"), "deny")


@pytest.mark.parametrize(
    ("snapshots", "destinations", "intentions"),
    [
        pytest.param([], (), (), id="nothing"),
        pytest.param(
            [CatalogSnapshot("file", (BILLING, PAYMENTS))], (BILLING, PAYMENTS), (), id="one"
        ),
        pytest.param(
            [CatalogSnapshot("a", (BILLING,)), CatalogSnapshot("b", (BILLING_OTHER, PAYMENTS))],
            (BILLING, PAYMENTS),
            (),
            id="first-source-defines-a-service",
        ),
        pytest.param(
            [CatalogSnapshot("a", (BILLING, BILLING_OTHER))],
            (BILLING,),
            (),
            id="first-occurrence-within-a-snapshot",
        ),
        pytest.param(
            [CatalogSnapshot("a", (BILLING,)), CatalogSnapshot("b", (TEAM_BILLING, AP_BILLING))],
            (BILLING, TEAM_BILLING, AP_BILLING),
            (),
            id="namespace-and-partition-are-part-of-the-name",
        ),
        pytest.param(
            [
                CatalogSnapshot("a", intentions=(ALLOW,)),
                CatalogSnapshot("b", intentions=None),
                CatalogSnapshot("c", intentions=(DENY,)),
            ],
            (),
            (ALLOW, DENY),
            id="intentions-concatenated-in-stack-order",
        ),
        pytest.param(
            [CatalogSnapshot("a", intentions=()), CatalogSnapshot("b", intentions=(DENY,))],
            (),
            (DENY,),
            id="empty-intentions-add-nothing",
        ),
    ],
)
def test_merge_snapshots(
    snapshots: list[CatalogSnapshot],
    destinations: tuple[Destination, ...],
    intentions: tuple[Intention, ...],
) -> None:
    """Destinations come from the first source naming them; intentions from every source."""
    merged_destinations, merged_intentions, version = merge_snapshots(snapshots)
    assert merged_destinations == destinations
    assert merged_intentions == intentions
    assert version


def test_merge_version_tracks_inputs() -> None:
    """The merged version changes with any input version, source, or the stack order."""
    a1, a2 = CatalogSnapshot("a", version="1"), CatalogSnapshot("a", version="2")
    b1 = CatalogSnapshot("b", version="1")
    v = merge_snapshots([a1, b1])[2]
    assert v == merge_snapshots([CatalogSnapshot("a", (BILLING,), version="1"), b1])[2]
    assert v != merge_snapshots([a2, b1])[2]
    assert v != merge_snapshots([b1, a1])[2]
    assert v != merge_snapshots([a1])[2]
    # No ambiguity from concatenation: ("ab", "") is not ("a", "b").
    assert (
        merge_snapshots([CatalogSnapshot("ab", version="")])[2]
        != merge_snapshots([CatalogSnapshot("a", version="b")])[2]
    )


def test_build_names_routes_with_the_gateways_datacenter() -> None:
    """A destination in dc2 is still reached under the gateway's own DC (Consul's TGW rule)."""
    remote = Destination(ServiceName("billing"), "dc2")
    table = RouteTable.build([remote], "dc1", TD)
    assert table.lookup(f"billing.default.dc1.internal.{TD}") is remote
    assert table.lookup(f"billing.default.dc2.internal.{TD}") is None


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        pytest.param(f"billing.default.dc1.internal.{TD}", BILLING, id="default"),
        pytest.param(f"billing.team.dc1.internal.{TD}", TEAM_BILLING, id="namespace"),
        pytest.param(f"billing.ns.ap1.dc1.internal-v1.{TD}", AP_BILLING, id="partition"),
        pytest.param(f"payments.default.dc1.internal.{TD}", PAYMENTS, id="other"),
        pytest.param("billing.default.dc1.internal.other.consul", None, id="other-td"),
        pytest.param(f"v1.billing.default.dc1.internal.{TD}", None, id="subset-unknown"),
        pytest.param("billing", None, id="bare-name"),
        pytest.param("", None, id="empty"),
    ],
)
def test_lookup(sni: str, expected: Destination | None) -> None:
    """lookup finds exactly the destinations by their service SNI and nothing else."""
    table = RouteTable.build([BILLING, TEAM_BILLING, AP_BILLING, PAYMENTS], "dc1", TD)
    assert table.lookup(sni) is expected


def test_lookup_after_normalising_client_spelling() -> None:
    """A client's upper-case, trailing-dot SNI finds the route once normalised."""
    table = RouteTable.build([BILLING], "dc1", TD)
    raw = f"BILLING.default.DC1.internal.{TD.upper()}."
    sni = normalize_sni(raw)
    assert sni is not None
    assert table.lookup(sni) is BILLING


def test_build_keeps_first_destination_for_a_name() -> None:
    """Two destinations with one SNI: the first wins, as in the merge."""
    table = RouteTable.build([BILLING, BILLING_OTHER], "dc1", TD)
    assert len(table) == 1
    assert table.lookup(f"billing.default.dc1.internal.{TD}") is BILLING


def test_iteration_len_services_version() -> None:
    """Iteration is sorted by SNI; services() and version reflect the build."""
    table = RouteTable.build([PAYMENTS, TEAM_BILLING, BILLING], "dc1", TD, version="v7")
    snis = [sni for sni, _ in table]
    assert snis == sorted(snis)
    assert len(table) == 3
    assert dict(table)[f"payments.default.dc1.internal.{TD}"] is PAYMENTS
    assert table.services() == frozenset(
        {ServiceName("payments"), ServiceName("billing", "team"), ServiceName("billing")}
    )
    assert table.version == "v7"


def test_empty_table() -> None:
    """The empty table routes nothing."""
    table = RouteTable.empty()
    assert len(table) == 0
    assert list(table) == []
    assert table.services() == frozenset()
    assert table.lookup(f"billing.default.dc1.internal.{TD}") is None
    assert table.describe() == []


def test_describe_is_json_ready() -> None:
    """describe() lists each route with service, TLS mode, policy and endpoint health."""
    billing = Destination(
        ServiceName("billing"),
        "dc1",
        (
            Endpoint("10.0.0.1", 443, Health.PASSING, weight=3),
            Endpoint("::1", 8443, Health.CRITICAL),
        ),
        tls=UpstreamTLS(ca_file="/ca.pem", sni="billing.example"),
        protocol="tcp",
        lb_policy="least_request",
    )
    table = RouteTable.build([PAYMENTS, billing], "dc1", TD)
    described = table.describe()
    assert json.loads(json.dumps(described)) == described
    assert described[0] == {
        "sni": f"billing.default.dc1.internal.{TD}",
        "service": "billing",
        "namespace": "default",
        "partition": "default",
        "datacenter": "dc1",
        "protocol": "tcp",
        "l7": False,
        "tls": "tls",
        "lb_policy": "least_request",
        "subset": "",
        "endpoints": [
            {"address": "10.0.0.1", "port": 443, "health": "passing", "weight": 3},
            {"address": "::1", "port": 8443, "health": "critical", "weight": 1},
        ],
    }
    assert described[1]["sni"] == f"payments.default.dc1.internal.{TD}"
    assert described[1]["tls"] == "plain"


def test_table_cannot_be_changed_through_its_input() -> None:
    """Mutating the dict a table was built from does not change the table."""
    routes = {"x": BILLING}
    table = RouteTable(routes)
    routes["y"] = PAYMENTS
    assert table.lookup("y") is None
    assert len(table) == 1


label = st.from_regex(r"\A[a-z][a-z0-9-]{0,8}\Z")
services = st.builds(
    ServiceName, label, st.sampled_from(["default", "team"]), st.sampled_from(["default", "ap1"])
)


@given(st.lists(services, max_size=10), label)
def test_every_destination_is_reachable_by_its_sni(names: list[ServiceName], dc: str) -> None:
    """Each distinct service gets exactly one route, under service_sni with the gateway DC."""
    destinations = [Destination(s, "elsewhere") for s in names]
    table = RouteTable.build(destinations, dc, TD)
    assert len(table) == len(set(names))
    assert table.services() == frozenset(names)
    for destination in destinations:
        found = table.lookup(service_sni(destination.service, dc, TD))
        assert found is not None
        assert found.service == destination.service


@given(
    st.lists(
        st.builds(
            CatalogSnapshot,
            st.sampled_from(["a", "b", "c"]),
            st.lists(st.builds(Destination, services, st.just("dc1")), max_size=4).map(tuple),
            st.none() | st.just((ALLOW,)),
            st.text(max_size=3),
        ),
        max_size=4,
    )
)
def test_merge_takes_each_service_from_the_first_snapshot(
    snapshots: list[CatalogSnapshot],
) -> None:
    """Merged destinations are unique by service and each is the first one in stack order."""
    destinations, intentions, _ = merge_snapshots(snapshots)
    assert len({d.service for d in destinations}) == len(destinations)
    everything = [d for s in snapshots for d in s.destinations]
    for d in destinations:
        assert d is next(e for e in everything if e.service == d.service)
    assert len(intentions) == sum(1 for s in snapshots if s.intentions is not None)


def test_subset_routes_use_consuls_subset_sni_in_both_forms() -> None:
    """A destination with service-resolver subsets gets one extra route per subset at
    ``<subset>.<svc>.<ns>.<dc>.internal.<td>`` (``internal-v1`` with the partition in a
    non-default partition), each reaching only the subset's endpoints; another DC's
    subsets get no route, and a subset never shadows a service's own name."""
    one, two = Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 2)
    billing = Destination(ServiceName("billing"), "dc1", (one, two), subsets=(("v1", (one,)),))
    ledger = Destination(
        ServiceName("ledger", "fin", "acct"), "dc1", (one, two), subsets=(("v2", (two,)),)
    )
    far = Destination(ServiceName("far"), "dc2", (one,), subsets=(("v1", (one,)),))
    table = RouteTable.build([billing, ledger, far], "dc1", TD)
    v1 = table.lookup(f"v1.billing.default.dc1.internal.{TD}")
    assert v1 is not None and v1.endpoints == (one,) and v1.subset == "v1"
    assert v1.service == billing.service and v1.subsets == ()
    v2 = table.lookup(f"v2.ledger.fin.acct.dc1.internal-v1.{TD}")
    assert v2 is not None and v2.endpoints == (two,)
    assert table.lookup(f"v1.far.default.dc1.internal.{TD}") is None
    assert len(table) == 5


@pytest.mark.parametrize(
    ("protocol", "egress", "l7"),
    [
        ("tcp", (), False),
        ("http", (), True),
        ("http2", (), True),
        ("grpc", (), True),
        ("http", ("api.example.com",), False),  # a service-defaults Destination
        ("grpc", ("10.1.2.3",), False),
    ],
)
def test_served_l7_for_http_like_linked_services_never_for_destinations(
    protocol: str, egress: tuple[str, ...], l7: bool
) -> None:
    """/routes says a route is L7 when its protocol is HTTP-like and it is a linked
    service; a ``destination.`` route stays L4 whatever its protocol (Consul supports no
    L7 intentions for destinations)."""
    from dataclasses import replace

    from gwcore.policy.routes import serves_l7

    destination = replace(PAYMENTS, protocol=protocol, egress=egress)
    assert serves_l7(destination) is l7
    table = RouteTable.build([destination], "dc1", TD)
    assert {r["l7"] for r in table.describe()} == {l7}
