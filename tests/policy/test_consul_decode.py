"""Consul's config decoder, as tgw reads it: weak typing (mapstructure's
WeaklyTypedInput), snake_case keys, numeric Hash, Partition on linked services, and
kinds tgw does not use skipped rather than refused (issue 17 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gwcore.policy.consul_decode import weak_bool, weak_int, weak_string
from gwcore.policy.consul_kinds import KINDS, SKIP
from gwcore.policy.consul_shapes import build_destinations, build_intentions, parse_documents

DUMP = Path(__file__).resolve().parents[1] / "data" / "consul-config-read"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("1", True), ("t", True), ("false", False),
     ("0", False), ("", False), (1, True), (0, False), (True, True), ("yes", None),
     ([], None)],
)  # fmt: skip
def test_weak_bool_reads_what_go_parsebool_reads(value, expected):
    """Go's strconv.ParseBool set, numbers as non-zero, empty as false; others fail."""
    assert weak_bool(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10", 10), ("0x1f", 31), ("017", 15), ("-5", -5), ("", 0), ("1_000", 1000),
     (2.0, 2), (2.5, None), (True, 1), ("ten", None), ({}, None)],
)  # fmt: skip
def test_weak_int_reads_what_go_parseint_base_0_reads(value, expected):
    """strconv.ParseInt(s, 0, 64): decimal, hex, leading-zero octal, underscores."""
    assert weak_int(value) == expected


def test_weak_string_formats_numbers_and_bools_like_mapstructure():
    """A bool becomes "1"/"0", a number its decimal text, a list is refused."""
    assert (weak_string(True), weak_string(False), weak_string(443)) == ("1", "0", "443")
    assert weak_string([1]) is None


def test_a_gateway_entry_read_back_from_consul_loads():
    """`consul config read` output: Hash is a uint64 number (above 2**63 too),
    CreateIndex/ModifyIndex present, Partition on a linked service accepted."""
    entry = json.loads((DUMP / "terminating-gateway.json").read_text())
    assert entry["Hash"] > 2**63
    docs, problems = parse_documents([("tg.json", entry)])
    assert problems == []
    assert [s.name for s in docs.gateways[0].services] == ["billing", "ldap"]


def test_weakly_typed_and_snake_case_entries_are_accepted_as_consul_accepts_them():
    """ "DisableAutoHostRewrite": "true", "Hash": "12", snake_case ca_file / sni and a
    numeric Precedence given as a string all decode as Consul's decoder does."""
    gateway = {
        "kind": "terminating-gateway",
        "name": "legacy-gw",
        "hash": "12",
        "services": [
            {"name": "billing", "ca_file": "/ca.pem", "sni": "b.example",
             "disable_auto_host_rewrite": "true"},
        ],
    }  # fmt: skip
    intentions = {
        "Kind": "service-intentions",
        "Name": "billing",
        "Sources": [{"Name": "web", "Action": "allow", "Precedence": "9"}],
    }
    docs, problems = parse_documents([("a", gateway), ("b", intentions)])
    assert problems == []
    (linked,) = docs.gateways[0].services
    assert (linked.tls.ca_file, linked.tls.sni) == ("/ca.pem", "b.example")
    assert [i.source.name for i in build_intentions(docs)] == ["web"]


def test_a_registration_stays_strictly_typed_like_the_catalog_api():
    """/v1/catalog/register is decoded by encoding/json: a string port is refused."""
    body = {"Node": "n", "Address": "10.0.0.1", "Service": {"Service": "s", "Port": "80"}}
    _, problems = parse_documents([("r", body)])
    assert [p.where for p in problems] == ["Service.Port"]


def test_a_linked_service_of_another_partition_is_refused():
    """A terminating gateway links services of its own partition only."""
    entry = {
        "Kind": "terminating-gateway",
        "Name": "gw",
        "Partition": "eu",
        "Services": [{"Name": "a", "Partition": "eu"}, {"Name": "b", "Partition": "us"}],
    }
    _, problems = parse_documents([("gw", entry)])
    assert [p.where for p in problems] == ["Services[1].Partition"]


def test_every_kind_of_a_config_read_directory_loads_and_unused_kinds_are_skipped():
    """The output of `consul config read` for every kind in one directory: the kinds
    tgw uses are read, every other kind is skipped (never a problem), and the gateway
    builds its destination with the protocol and intentions of the dump."""
    items = [(p.name, json.loads(p.read_text())) for p in sorted(DUMP.glob("*.json"))]
    docs, problems = parse_documents(items)
    assert problems == []
    assert sorted(e.kind for e in docs.skipped) == sorted(
        ["exported-services", "service-resolver", "service-router", "service-splitter"]
    )  # fmt: skip
    assert all(KINDS[e.kind] == SKIP for e in docs.skipped)
    destinations, unusable = build_destinations(docs, "legacy-gw", "dc1")
    assert unusable == []
    billing = next(d for d in destinations if d.service.name == "billing")
    assert billing.protocol == "http" and billing.tls.sni == "billing.corp.example"
    assert len(build_intentions(docs)) == 2


def test_a_kind_consul_does_not_know_is_still_an_error():
    """A typo in Kind is not a skipped kind: it is reported, naming the field."""
    _, problems = parse_documents([("x", {"Kind": "terminating-gatway", "Name": "gw"})])
    assert [p.where for p in problems] == ["Kind"]
