"""The Consul double's state store keeps Consul's indexes (agent/consul/state/catalog.go,
config_entry.go; reference §10): per table, per service and per node; no-op writes move
nothing; config entries carry Hash, CreateIndex and ModifyIndex."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.testing.consul_state import CatalogStore, Indexes, content_hash


def _body(address: str = "10.0.0.1", status: str = "passing") -> dict[str, Any]:
    return {
        "Node": "n1",
        "Address": address,
        "Service": {"ID": "billing-1", "Service": "billing", "Port": 443},
        "Checks": [{"CheckID": "c1", "Status": status, "ServiceID": "billing-1"}],
    }


def _store() -> CatalogStore:
    store = CatalogStore("dc1", Indexes())
    store.register(_body())
    store.register({"Node": "n2", "Address": "10.0.0.9", "Service": {"Service": "ldap", "Port": 1}})
    return store


def _tables(store: CatalogStore) -> dict[str, int]:
    keys = ("nodes", "services", "checks", "service.billing", "service.ldap", "node.n1")
    return {k: store.indexes.get(k) for k in keys}


def test_a_register_that_changes_nothing_moves_no_index():
    """A re-register with identical content moves no table, service or node index."""
    store = _store()
    before = _tables(store)
    store.register(_body())
    assert _tables(store) == before


def test_a_node_move_moves_the_node_and_its_services_but_not_the_services_or_checks_table():
    """A new node Address moves nodes, node.n1 and service.billing (the service on it),
    not services, checks, or another node's service (updateAllServiceIndexesOfNode)."""
    store = _store()
    before = _tables(store)
    index = store.register(_body("10.0.0.2"))
    after = _tables(store)
    assert after["nodes"] == after["node.n1"] == after["service.billing"] == index
    assert after["services"] == before["services"]
    assert after["checks"] == before["checks"]
    assert after["service.ldap"] == before["service.ldap"]
    assert store.service_index("billing") == index
    assert store.nodes["n1"]["ModifyIndex"] == index
    assert store.nodes["n1"]["CreateIndex"] < index


def test_a_check_change_moves_checks_and_its_service_only():
    """A check status change moves checks and service.billing, not services or nodes."""
    store = _store()
    before = _tables(store)
    store.set_check("n1", "c1", "critical")
    after = _tables(store)
    assert after["checks"] > before["checks"]
    assert after["service.billing"] == after["checks"]
    assert (after["services"], after["nodes"]) == (before["services"], before["nodes"])


def test_a_missing_service_answers_with_the_last_extinction_index():
    """A service with no instance answers with service_last_extinction (not the services
    table), which moves when a service's last instance is deregistered."""
    store = _store()
    assert store.service_index("nothing") == 1
    index = store.deregister("n2", "ldap")
    assert store.service_index("ldap") == index
    assert store.service_index("nothing") == index


def test_config_entries_carry_hash_and_indexes_and_a_rewrite_without_change_is_a_no_op():
    """put_config stores Hash (an unsigned 64-bit number of the content), CreateIndex and
    ModifyIndex; writing the same content again moves nothing; a change keeps
    CreateIndex and moves ModifyIndex and Hash."""
    store = _store()
    entry = {"Kind": "terminating-gateway", "Name": "gw", "Services": [{"Name": "billing"}]}
    first = store.put_config(entry)
    stored = store.config[("terminating-gateway", "gw")]
    assert isinstance(stored["Hash"], int) and 0 <= stored["Hash"] < 2**64
    assert stored["Hash"] == content_hash(entry)
    assert stored["CreateIndex"] == stored["ModifyIndex"] == first
    assert store.put_config({**entry, "Hash": 1, "ModifyIndex": 99}) == first
    second = store.put_config({**entry, "Services": [{"Name": "ldap"}]})
    stored2 = store.config[("terminating-gateway", "gw")]
    assert second > first and stored2["CreateIndex"] == first
    assert stored2["Hash"] != stored["Hash"]


def test_intention_sources_inherit_the_destination_namespace_and_partition():
    """normalize(): a source without Namespace/Partition gets the destination's; a peer
    source keeps none; an explicit one is kept."""
    store = _store()
    store.put_config(
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Namespace": "finance",
            "Partition": "eu",
            "Sources": [
                {"Name": "web", "Action": "allow"},
                {"Name": "ops", "Namespace": "ops", "Action": "allow"},
                {"Name": "remote", "Peer": "other", "Action": "allow"},
            ],
        }
    )
    sources = store.entry("service-intentions", "billing", "finance", "eu")["Sources"]
    assert (sources[0]["Namespace"], sources[0]["Partition"]) == ("finance", "eu")
    assert (sources[1]["Namespace"], sources[1]["Partition"]) == ("ops", "eu")
    assert "Namespace" not in sources[2] and "Partition" not in sources[2]


def test_health_service_honours_namespace_and_partition():
    """An instance registered in namespace finance is answered for ns=finance only."""
    store = _store()
    store.register(
        {"Node": "n3", "Address": "10.0.0.3",
         "Service": {"Service": "billing", "Port": 1, "Namespace": "finance"}}
    )  # fmt: skip
    default = store.health_service("billing", False)
    finance = store.health_service("billing", False, "finance")
    assert [i["Node"]["Node"] for i in default] == ["n1"]
    assert [i["Node"]["Node"] for i in finance] == ["n3"]
    assert finance[0]["Service"]["Namespace"] == "finance"
    assert "Namespace" not in default[0]["Service"]


def _content(store: CatalogStore) -> Any:
    strip = lambda d: {k: v for k, v in d.items() if k not in ("CreateIndex", "ModifyIndex")}  # noqa: E731
    return [
        {k: strip(v) for k, v in table.items()}
        for table in (store.nodes, store.services, store.checks)
    ]


_WRITES = st.one_of(
    st.tuples(
        st.just("register"),
        st.sampled_from(["n1", "n2"]),
        st.sampled_from(["10.0.0.1", "10.0.0.2"]),
        st.sampled_from(["billing", "ldap"]),
        st.sampled_from(["passing", "critical"]),
    ),
    st.tuples(
        st.just("node"), st.sampled_from(["n1", "n2"]), st.sampled_from(["10.0.0.1", "10.0.0.3"])
    ),
    st.tuples(st.just("deregister"), st.sampled_from(["n1", "n2"])),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_WRITES, min_size=1, max_size=12))
def test_every_change_of_a_health_answer_moves_its_service_index_and_a_table(writes):
    """For any sequence of registers, node-only updates and deregisters: whenever
    /v1/health/service/<name> would answer differently, the service's index moved
    (what a per-service watch relies on) and so did one of the services, nodes or
    checks tables (what consul_catalog's detectors rely on); a write that changes no
    content moves no index."""
    store = CatalogStore("dc1", Indexes())
    for write in writes:
        before = {n: store.health_service(n, False) for n in ("billing", "ldap")}
        indexes = {n: store.service_index(n) for n in ("billing", "ldap")}
        tables = [store.indexes.get(t) for t in ("services", "nodes", "checks")]
        all_before = dict(store.indexes.values)
        content_before = _content(store)
        if write[0] == "register":
            _, node, address, service, status = write
            store.register(
                {"Node": node, "Address": address,
                 "Service": {"ID": f"{service}-{node}", "Service": service, "Port": 1},
                 "Checks": [{"CheckID": f"c-{service}-{node}", "Status": status,
                             "ServiceID": f"{service}-{node}"}]}
            )  # fmt: skip
        elif write[0] == "node":
            store.register({"Node": write[1], "Address": write[2]})
        else:
            store.deregister(write[1])
        changed_any = False
        for name in ("billing", "ldap"):
            if store.health_service(name, False) != before[name]:
                changed_any = True
                assert store.service_index(name) > indexes[name], (write, name)
        if changed_any:
            after = [store.indexes.get(t) for t in ("services", "nodes", "checks")]
            assert any(a > b for a, b in zip(after, tables, strict=True)), write
        if _content(store) == content_before:
            assert store.indexes.values == all_before, write


def test_config_entries_of_another_namespace_are_distinct():
    """The same kind and name in two namespaces are two entries; reads and deletes name
    the namespace (?ns=), as in Consul Enterprise."""
    store = _store()
    store.put_config({"Kind": "service-defaults", "Name": "billing", "Protocol": "http"})
    store.put_config(
        {"Kind": "service-defaults", "Name": "billing", "Namespace": "finance", "Protocol": "grpc"}
    )
    assert store.entry("service-defaults", "billing")["Protocol"] == "http"
    assert store.entry("service-defaults", "billing", "finance")["Protocol"] == "grpc"
    assert [e["Protocol"] for e in store.entries("service-defaults", "finance")] == ["grpc"]
    store.delete_config("service-defaults", "billing", "finance")
    assert store.entry("service-defaults", "billing", "finance") is None
    assert store.entry("service-defaults", "billing") is not None
