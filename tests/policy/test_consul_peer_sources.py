"""Peer and sameness-group intention sources (issue 17 item 4), and Consul's normalize()
of source namespaces and partitions: parsed as Consul parses them, never matching a
local caller, and said so in the decision reason that `tgw explain` shows."""

from __future__ import annotations

from gwcore.plugins.consul_intentions import intentions_from_match
from gwcore.policy.consul_shapes import build_intentions, parse_documents
from gwcore.policy.intentions import IntentionSet
from gwcore.policy.model import ServiceName, Verdict


def _entry(*sources: dict, **entry: str) -> dict:
    return {"Kind": "service-intentions", "Name": "billing", **entry, "Sources": list(sources)}


def test_a_peer_source_keeps_the_local_sources_of_its_entry():
    """One Peer source and one SamenessGroup source no longer reject the entry: the
    local source still allows web."""
    entry = _entry(
        {"Name": "web", "Action": "allow"},
        {"Name": "web", "Peer": "dc2-peer", "Action": "deny"},
        {"Name": "web", "SamenessGroup": "group-a", "Action": "deny"},
    )
    docs, problems = parse_documents([("f", entry)])
    assert problems == []
    found = build_intentions(docs)
    assert [(i.source_peer, i.source_sameness_group) for i in found] == [
        ("", ""), ("dc2-peer", ""), ("", "group-a")
    ]  # fmt: skip
    decision = IntentionSet(found).decide(ServiceName("web"), ServiceName("billing"))
    assert decision.verdict is Verdict.ALLOW


def test_duplicates_are_keyed_by_peer_and_sameness_group_too():
    """The same name twice is a duplicate only with the same peer and sameness group."""
    same = _entry({"Name": "web", "Peer": "p", "Action": "allow"},
                  {"Name": "web", "Peer": "p", "Action": "deny"})  # fmt: skip
    _, problems = parse_documents([("f", same)])
    assert [p.where for p in problems] == ["Sources[1].Name"]


def test_a_peer_source_never_matches_a_local_caller_and_the_reason_says_so():
    """A peer allow for web does not allow the local web: the engine abstains and its
    reason names the peer intention it could not evaluate."""
    docs, _ = parse_documents([("f", _entry({"Name": "web", "Peer": "p", "Action": "allow"}))])
    decision = IntentionSet(build_intentions(docs)).decide(
        ServiceName("web"), ServiceName("billing")
    )
    assert decision.verdict is Verdict.ABSTAIN
    assert "peer or sameness-group source not evaluated" in decision.reason


def test_partition_cannot_be_set_with_a_peer():
    """Consul refuses Partition next to Peer or SamenessGroup."""
    entry = _entry({"Name": "web", "Peer": "p", "Partition": "eu", "Action": "allow"})
    _, problems = parse_documents([("f", entry)])
    assert [p.where for p in problems] == ["Sources[0].Partition"]


def test_a_source_without_namespace_inherits_the_destinations():
    """normalize(): web in an entry for finance/billing is finance/web, not default/web;
    a wildcard destination namespace is not inherited."""
    docs, problems = parse_documents(
        [("f", _entry({"Name": "web", "Action": "allow"}, Namespace="finance", Partition="eu"))]
    )
    assert problems == []
    (found,) = build_intentions(docs)
    assert found.source == ServiceName("web", "finance", "eu")
    decision = IntentionSet([found]).decide(
        ServiceName("web", "finance", "eu"), ServiceName("billing", "finance", "eu")
    )
    assert decision.verdict is Verdict.ALLOW


def test_match_answers_keep_the_sameness_group():
    """intentions_from_match reads SourceSamenessGroup (and SourcePeer)."""
    body = {"billing": [
        {"SourceName": "web", "SourceNS": "default", "SourcePartition": "", "SourcePeer": "",
         "SourceSamenessGroup": "group-a", "DestinationName": "billing",
         "DestinationNS": "default", "DestinationPartition": "default", "Action": "allow",
         "SourceType": "consul", "Precedence": 9},
    ]}  # fmt: skip
    found, problems = intentions_from_match(body)
    assert problems == []
    assert [i.source_sameness_group for i in found] == ["group-a"]
