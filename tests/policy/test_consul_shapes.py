"""Consul's JSON documents read into model objects (gwcore.policy.consul_shapes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.consul_shapes import (
    CatalogDocuments,
    ShapeProblem,
    build_destinations,
    build_intentions,
    build_mesh_destinations,
    build_mesh_gateways,
    classify,
    decode_documents,
    merge_documents,
    parse_documents,
)
from gwcore.policy.model import (
    Destination,
    Endpoint,
    Health,
    Intention,
    ServiceName,
    TLSMode,
    UpstreamTLS,
)

# --- the reference's example documents (reference/consul-terminating-gateway.md) ----------

REFERENCE_GATEWAY = {
    "Kind": "terminating-gateway",
    "Name": "legacy-gw",
    "Services": [
        {"Name": "*", "CAFile": "/etc/tgw/ca.pem"},
        {
            "Name": "billing",
            "CAFile": "/etc/tgw/billing-ca.pem",
            "CertFile": "/etc/tgw/gw.pem",
            "KeyFile": "/etc/tgw/gw.key",
            "SNI": "billing.corp.example",
        },
        {"Name": "ldap"},
    ],
}

REFERENCE_REGISTRATION = {
    "Node": "legacy_node",
    "Address": "10.0.0.9",
    "NodeMeta": {"external-node": "true", "external-probe": "true"},
    "Service": {"ID": "s2", "Service": "s2", "Port": 80},
}

REFERENCE_HEALTH_DUMP = [
    {
        "Node": {
            "ID": "",
            "Node": "legacy_node",
            "Address": "10.0.0.9",
            "Datacenter": "dc1",
            "TaggedAddresses": None,
            "Meta": {"external-node": "true", "external-probe": "true"},
            "CreateIndex": 20,
            "ModifyIndex": 20,
        },
        "Service": {
            "ID": "billing-1",
            "Service": "billing",
            "Tags": [],
            "Address": "billing.corp.example",
            "Port": 443,
            "Meta": {"version": "v1"},
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Kind": "",
            "CreateIndex": 21,
            "ModifyIndex": 21,
        },
        "Checks": [
            {
                "Node": "legacy_node",
                "CheckID": "billing-tcp",
                "Name": "billing tcp",
                "Status": "passing",
                "ServiceID": "billing-1",
                "ServiceName": "billing",
                "Output": "",
                "Type": "tcp",
            }
        ],
    }
]

REFERENCE_SERVICE_DEFAULTS = {
    "Kind": "service-defaults",
    "Name": "example-https",
    "Protocol": "tcp",
    "Destination": {"Addresses": ["example.com"], "Port": 443},
}

REFERENCE_INTENTIONS = {
    "Kind": "service-intentions",
    "Name": "billing",
    "Sources": [
        {"Name": "web", "Action": "deny", "Description": "web is not trusted"},
        {"Name": "*", "Action": "allow", "Type": "consul", "Precedence": 8},
        {
            "Name": "api",
            "Permissions": [
                {"Action": "allow", "HTTP": {"PathPrefix": "/invoices", "Methods": ["GET"]}}
            ],
        },
    ],
}


def parse(*documents: Any, origin: str = "catalog.json") -> tuple[CatalogDocuments, list]:
    """Parse documents given as one value (a single document or a list) per origin."""
    return parse_documents([(origin, d) for d in documents])


def registration(
    node: str = "n1",
    service: str = "billing",
    *,
    sid: str | None = None,
    address: str = "10.0.0.1",
    port: int = 8080,
    checks: list[dict[str, Any]] | None = None,
    **service_fields: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Node": node,
        "Address": address,
        "Service": {"ID": sid or service, "Service": service, "Port": port, **service_fields},
    }
    if checks is not None:
        body["Checks"] = checks
    return body


def gateway(*services: dict[str, Any], name: str = "legacy-gw") -> dict[str, Any]:
    return {"Kind": "terminating-gateway", "Name": name, "Services": list(services)}


def destinations(*documents: Any, datacenter: str = "dc1") -> tuple[Destination, ...]:
    docs, problems = parse(*documents)
    assert problems == []
    built, build_problems = build_destinations(docs, "legacy-gw", datacenter)
    assert build_problems == []
    return built


def by_name(dests: tuple[Destination, ...]) -> dict[str, Destination]:
    return {d.name: d for d in dests}


# --- classify -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (REFERENCE_GATEWAY, "terminating-gateway"),
        (REFERENCE_INTENTIONS, "service-intentions"),
        (REFERENCE_SERVICE_DEFAULTS, "service-defaults"),
        (REFERENCE_REGISTRATION, "registration"),
        (REFERENCE_HEALTH_DUMP[0], "registration"),
        ({"kind": "terminating-gateway", "name": "gw"}, "terminating-gateway"),
        ({"Kind": "proxy-defaults", "Name": "global"}, "proxy-defaults"),
        ({"Kind": "mesh", "Name": "mesh"}, "mesh"),
        ({"Kind": "service-router", "Name": "web"}, "skipped"),
        ({"Kind": "terminating-gatway", "Name": "gw"}, "unknown"),
        ({"Kind": 7}, "unknown"),
        ({"Name": "billing"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_classify_tells_config_entries_by_kind_and_registrations_by_node(document, kind):
    assert classify(document) == kind


# --- every shape is accepted ------------------------------------------------------------


def test_reference_gateway_entry_gives_wildcard_defaults_and_explicit_overrides():
    docs, problems = parse(REFERENCE_GATEWAY)
    assert problems == []
    (entry,) = docs.gateways
    assert entry.name == "legacy-gw"
    assert [s.name for s in entry.services] == ["*", "billing", "ldap"]
    billing = entry.services[1].tls
    assert billing == UpstreamTLS(
        "/etc/tgw/billing-ca.pem", "/etc/tgw/gw.pem", "/etc/tgw/gw.key", "billing.corp.example"
    )
    assert billing.mode is TLSMode.MTLS
    assert entry.services[2].tls.mode is TLSMode.PLAIN


def test_snake_case_aliases_are_the_same_fields_as_camel_case():
    """HCL-style ca_file/cert_file/key_file/sni work as in Consul's decoder."""
    docs, problems = parse(
        gateway(
            {
                "name": "billing",
                "ca_file": "/ca.pem",
                "cert_file": "/gw.pem",
                "key_file": "/gw.key",
                "sni": "billing.example",
            }
        )
    )
    assert problems == []
    assert docs.gateways[0].services[0].tls == UpstreamTLS(
        "/ca.pem", "/gw.pem", "/gw.key", "billing.example"
    )


def test_reference_register_body_is_a_registration_with_a_node_name():
    docs, problems = parse(REFERENCE_REGISTRATION)
    assert problems == []
    (reg,) = docs.registrations
    assert (reg.node, reg.address) == ("legacy_node", "10.0.0.9")
    assert dict(reg.node_meta) == {"external-node": "true", "external-probe": "true"}
    assert reg.service is not None
    assert (reg.service.instance_id, reg.service.port) == ("s2", 80)


def test_reference_health_dump_loads_with_node_objects_and_checks():
    """A saved answer of /v1/health/service/billing is a list of {Node, Service, Checks}."""
    docs, problems = parse(REFERENCE_HEALTH_DUMP)
    assert problems == []
    (reg,) = docs.registrations
    assert (reg.node, reg.address, reg.datacenter) == ("legacy_node", "10.0.0.9", "dc1")
    assert reg.checks[0].service_id == "billing-1"
    built = destinations(REFERENCE_HEALTH_DUMP, gateway({"Name": "billing"}))
    assert built[0].endpoints == (
        Endpoint(
            "billing.corp.example",
            443,
            Health.PASSING,
            1,
            instance_id="billing-1",
            node="legacy_node",
        ),
    )
    assert dict(built[0].endpoints[0].meta) == {"version": "v1"}


def test_reference_service_defaults_sets_protocol_and_ignores_fields_tgw_does_not_use():
    docs, problems = parse(REFERENCE_SERVICE_DEFAULTS)
    assert problems == []
    assert docs.service_defaults[0].protocol == "tcp"
    http = {"Kind": "service-defaults", "Name": "billing", "Protocol": "HTTP"}
    built = destinations(http, gateway({"Name": "billing"}, {"Name": "ldap"}))
    assert by_name(built)["billing"].protocol == "http"
    assert by_name(built)["ldap"].protocol == "tcp"


def test_reference_intentions_flatten_to_one_intention_per_source():
    docs, problems = parse(REFERENCE_INTENTIONS, origin="/etc/catalog/intentions.json")
    assert problems == []
    web, anyone, api = build_intentions(docs)
    billing = ServiceName("billing")
    assert web == Intention(
        ServiceName("web"),
        billing,
        "deny",
        description="web is not trusted",
        origin="/etc/catalog/intentions.json",
    )
    assert (anyone.source, anyone.action) == (ServiceName("*"), "allow")
    assert api.action == ""
    assert tuple(p.as_consul() for p in api.permissions) == tuple(
        REFERENCE_INTENTIONS["Sources"][2]["Permissions"]
    )


def test_intention_action_is_case_insensitive_and_stored_lower_case():
    entry = {
        "Kind": "service-intentions",
        "Name": "billing",
        "Sources": [{"Name": "web", "Action": "ALLOW", "Namespace": "ops", "Partition": "p1"}],
    }
    docs, problems = parse(entry)
    assert problems == []
    (intention,) = build_intentions(docs)
    assert intention.action == "allow"
    assert intention.source == ServiceName("web", "ops", "p1")


def test_intentions_are_ordered_by_destination_whatever_the_document_order():
    a = {"Kind": "service-intentions", "Name": "a", "Sources": [{"Name": "x", "Action": "allow"}]}
    b = {"Kind": "service-intentions", "Name": "b", "Sources": [{"Name": "x", "Action": "deny"}]}
    first, _ = parse([a, b])
    second, _ = parse([b, a])
    assert build_intentions(first) == build_intentions(second)
    assert [i.destination.name for i in build_intentions(first)] == ["a", "b"]


def test_a_file_may_hold_a_list_of_documents_of_every_kind():
    docs, problems = parse(
        [
            REFERENCE_GATEWAY,
            REFERENCE_REGISTRATION,
            REFERENCE_SERVICE_DEFAULTS,
            REFERENCE_INTENTIONS,
        ]
    )
    assert problems == []
    assert len(docs.gateways) == len(docs.registrations) == 1
    assert len(docs.service_defaults) == len(docs.intentions) == 1


def test_decode_documents_reads_bytes_and_locates_syntax_errors():
    docs, problems = decode_documents("a.json", json.dumps(REFERENCE_GATEWAY).encode())
    assert problems == [] and docs.gateways[0].name == "legacy-gw"
    _, problems = decode_documents("b.json", b'{"Kind": "terminating-gateway",\n "Name": }')
    assert problems == [ShapeProblem("b.json", "line 2 column 10", "invalid JSON: Expecting value")]
    _, problems = decode_documents("c.json", b"\xff\xfe\xfa")
    assert problems[0].message.startswith("invalid JSON")


# --- every validation rule --------------------------------------------------------------


def intentions(*sources: dict[str, Any], name: str = "billing", **fields: Any) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": name, "Sources": list(sources), **fields}


INVALID = [
    # terminating-gateway (reference §1)
    ("gateway without Name", {"Kind": "terminating-gateway"}, "Name", "is required"),
    ("gateway with empty Name", gateway(name=""), "Name", "must not be empty"),
    ("linked service without Name", gateway({"SNI": "x"}), "Services[0].Name", "is required"),
    (
        "service linked twice",
        gateway({"Name": "billing"}, {"Name": "billing", "CAFile": "/ca"}),
        "Services[1].Name",
        "was specified more than once within a namespace",
    ),
    (
        "CertFile without CAFile and KeyFile",
        gateway({"Name": "billing", "CertFile": "/c"}),
        "Services[0].CertFile",
        "must have a CertFile, CAFile, and KeyFile specified for TLS origination",
    ),
    (
        "KeyFile without CertFile",
        gateway({"Name": "billing", "CAFile": "/ca", "KeyFile": "/k"}),
        "Services[0].KeyFile",
        "must have a CertFile, CAFile, and KeyFile",
    ),
    (
        "CertFile and KeyFile without CAFile",
        gateway({"Name": "billing", "CertFile": "/c", "KeyFile": "/k"}),
        "Services[0].CertFile",
        "must have a CertFile, CAFile, and KeyFile",
    ),
    (
        "wildcard namespace on a linked service",
        gateway({"Name": "billing", "Namespace": "*"}),
        "Services[0].Namespace",
        "Wildcard namespace is not supported for terminating gateway services",
    ),
    (
        "misspelled TLS field",
        gateway({"Name": "billing", "CaFiel": "/ca"}),
        "Services[0].CaFiel",
        "unknown field",
    ),
    (
        "one field spelled two ways",
        gateway({"Name": "billing", "CAFile": "/a", "ca_file": "/b"}),
        "Services[0].ca_file",
        "names the same field as CAFile",
    ),
    ("Services not a list", gateway() | {"Services": {}}, "Services", "must be a list"),
    ("linked service not an object", gateway("billing"), "Services[0]", "must be an object"),
    ("CAFile not a string", gateway({"Name": "b", "CAFile": [1]}), "Services[0].CAFile", "string"),
    # service-intentions (reference §6)
    (
        "Action and Permissions together",
        intentions(
            {
                "Name": "web",
                "Action": "allow",
                "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}],
            }
        ),
        "Sources[0].Action",
        "mutually exclusive",
    ),
    (
        "neither Action nor Permissions",
        intentions({"Name": "web"}),
        "Sources[0].Action",
        "one of Action or Permissions is required",
    ),
    (
        "empty Permissions and no Action",
        intentions({"Name": "web", "Permissions": []}),
        "Sources[0].Permissions",
        "must not be empty",
    ),
    (
        "action neither allow nor deny",
        intentions({"Name": "web", "Action": "permit"}),
        "Sources[0].Action",
        'must be "allow" or "deny"',
    ),
    (
        "partial wildcard source",
        intentions({"Name": "we*", "Action": "allow"}),
        "Sources[0].Name",
        "partial wildcard",
    ),
    (
        "partial wildcard destination",
        intentions({"Name": "web", "Action": "allow"}, name="bill*"),
        "Name",
        "partial wildcard",
    ),
    (
        "wildcard source namespace with an exact name",
        intentions({"Name": "web", "Namespace": "*", "Action": "allow"}),
        "Sources[0].Namespace",
        "a wildcard namespace requires a wildcard Name",
    ),
    (
        "wildcard destination namespace with an exact name",
        intentions({"Name": "web", "Action": "allow"}, Namespace="*"),
        "Namespace",
        "a wildcard namespace requires a wildcard Name",
    ),
    (
        "L7 permissions on a wildcard destination",
        intentions(
            {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
            name="*",
        ),
        "Sources[0].Permissions",
        "cannot be used on a wildcard destination",
    ),
    (
        "the same source twice",
        intentions({"Name": "web", "Action": "allow"}, {"Name": "web", "Action": "deny"}),
        "Sources[1].Name",
        "names the same source as Sources[0]",
    ),
    (
        "a source with both Peer and SamenessGroup",
        intentions({"Name": "web", "Peer": "other", "SamenessGroup": "g", "Action": "allow"}),
        "Sources[0].Peer",
        "cannot both be set",
    ),
    (
        "a JWT requirement",
        intentions({"Name": "web", "Action": "allow"}, JWT={"Providers": [{"Name": "okta"}]}),
        "JWT",
        "not supported",
    ),
    (
        "a source type other than consul",
        intentions({"Name": "web", "Action": "allow", "Type": "k8s"}),
        "Sources[0].Type",
        'must be "consul"',
    ),
    (
        "Permissions not objects",
        intentions({"Name": "web", "Permissions": ["allow"]}),
        "Sources[0].Permissions",
        "must be a list of objects",
    ),
    (
        "unknown source field",
        intentions({"Name": "web", "Action": "allow", "Actoin": "deny"}),
        "Sources[0].Actoin",
        "unknown field",
    ),
    # service-defaults
    (
        "unknown protocol",
        {"Kind": "service-defaults", "Name": "billing", "Protocol": "smtp"},
        "Protocol",
        "must be one of tcp, http, http2, grpc",
    ),
    ("defaults without Name", {"Kind": "service-defaults"}, "Name", "is required"),
    # registrations
    ("node without Address", {"Node": "n1"}, "Address", "is required"),
    ("node object without Node", [{"Node": {"Address": "10.0.0.1"}}], "[0].Node.Node", "required"),
    (
        "service without a name",
        {"Node": "n1", "Address": "10.0.0.1", "Service": {"Port": 80}},
        "Service.Service",
        "is required",
    ),
    (
        "port as a string",
        registration(port="80"),  # type: ignore[arg-type]
        "Service.Port",
        "must be an integer, not a string",
    ),
    ("port out of range", registration(port=70000), "Service.Port", "between 0 and 65535"),
    (
        "weight not an integer",
        registration(Weights={"Passing": "1"}),
        "Service.Weights.Passing",
        "must be an integer",
    ),
    ("meta not strings", registration(Meta={"v": 1}), "Service.Meta", "an object of strings"),
    (
        "check with an unknown status",
        registration(checks=[{"CheckID": "c", "Status": "ok"}]),
        "Checks[0].Status",
        "must be one of passing, warning, critical, maintenance",
    ),
    (
        "check for another node",
        registration(checks=[{"CheckID": "c", "Node": "n2", "Status": "passing"}]),
        "Checks[0].Node",
        "names node 'n2', not 'n1'",
    ),
    (
        "check without CheckID or Name",
        registration(checks=[{"Status": "passing"}]),
        "Checks[0].CheckID",
        "is required",
    ),
    # document shapes
    ("a string", "billing", "(document)", "must be a JSON object"),
    ("a list item that is not an object", [REFERENCE_REGISTRATION, 7], "[1]", "JSON object"),
    (
        "a kind Consul does not know",
        {"Kind": "terminating-gatway", "Name": "gw"},
        "Kind",
        "not a config-entry kind Consul knows",
    ),
    ("neither Kind nor Node", {"Name": "billing"}, "Kind", "is missing"),
]


@pytest.mark.parametrize(
    ("document", "where", "message"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_document_is_reported_where_it_is_wrong_and_left_out(document, where, message):
    docs, problems = parse(document, origin="cat/bad.json")
    assert [(p.origin, p.where) for p in problems] == [("cat/bad.json", where)], problems
    assert message in problems[0].message
    assert str(problems[0]) == f"cat/bad.json: {where}: {problems[0].message}"
    kept = len(docs.gateways) + len(docs.intentions) + len(docs.service_defaults)
    kept_registrations = [r for r in docs.registrations if r.node != "legacy_node"]
    assert kept + len(kept_registrations) == 0


def test_problems_in_a_list_name_the_item_and_only_that_item_is_left_out():
    bad = gateway({"Name": "billing", "CertFile": "/c"})
    docs, problems = parse([REFERENCE_REGISTRATION, bad])
    assert [p.where for p in problems] == ["[1].Services[0].CertFile"]
    assert len(docs.registrations) == 1 and docs.gateways == ()


def test_a_wildcard_namespace_with_a_wildcard_name_is_a_valid_intention_source():
    docs, problems = parse(intentions({"Name": "*", "Namespace": "*", "Action": "deny"}))
    assert problems == []
    assert build_intentions(docs)[0].source == ServiceName("*", "*")


def test_tls_without_sni_and_ca_alone_are_valid():
    """CAFile alone is one-way TLS; a missing SNI is only a warning in Consul."""
    docs, problems = parse(gateway({"Name": "billing", "CAFile": "/ca.pem"}))
    assert problems == []
    assert docs.gateways[0].services[0].tls.mode is TLSMode.TLS


# --- duplicates across documents ---------------------------------------------------------


def test_merge_keeps_the_first_of_two_entries_for_one_gateway_and_reports_the_second():
    first, _ = parse(gateway({"Name": "billing"}), origin="a.json")
    second, _ = parse(gateway({"Name": "ldap"}), origin="b.json")
    merged, problems = merge_documents([first, second])
    assert [s.name for s in merged.gateways[0].services] == ["billing"]
    assert problems == [
        ShapeProblem(
            "b.json", "(document)", "terminating-gateway 'legacy-gw' is already defined by a.json"
        )
    ]


@pytest.mark.parametrize(
    "document",
    [
        registration(),
        {"Kind": "service-defaults", "Name": "billing", "Protocol": "http"},
        intentions({"Name": "web", "Action": "allow"}),
    ],
    ids=["instance", "service-defaults", "service-intentions"],
)
def test_the_same_identity_twice_in_one_file_is_reported(document):
    docs, problems = parse([document, document])
    assert len(docs.registrations + docs.service_defaults + docs.intentions) == 1
    assert [p.where for p in problems] == ["[1]"]
    assert "is already defined by catalog.json [0]" in problems[0].message


def test_the_same_node_check_in_several_health_dump_elements_is_not_a_conflict():
    serf = {"CheckID": "serfHealth", "Status": "passing", "Node": "n1"}
    one = {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"Service": "a", "Port": 1}}
    two = {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"Service": "b", "Port": 2}}
    _, problems = parse([one | {"Checks": [serf]}, two | {"Checks": [serf]}])
    assert problems == []


# --- endpoints: health, weight, address ---------------------------------------------------


def check(status: str | None, service_id: str = "billing", check_id: str = "c") -> dict[str, Any]:
    found: dict[str, Any] = {"CheckID": check_id, "ServiceID": service_id}
    if status is not None:
        found["Status"] = status
    return found


HEALTH_CASES = [
    ("no checks is passing", {}, [], Health.PASSING, 1),
    ("passing check", {}, [check("passing")], Health.PASSING, 1),
    ("critical check", {}, [check("passing"), check("critical", check_id="d")], Health.CRITICAL, 1),
    ("maintenance is critical", {}, [check("maintenance")], Health.CRITICAL, 1),
    ("a check without Status is critical", {}, [check(None)], Health.CRITICAL, 1),
    ("node check counts", {}, [check("critical", service_id="")], Health.CRITICAL, 1),
    ("other service's check ignored", {}, [check("critical", "other")], Health.PASSING, 1),
    (
        "warning uses the warning weight",
        {"Weights": {"Passing": 10, "Warning": 3}},
        [check("warning")],
        Health.WARNING,
        3,
    ),
    ("passing uses the passing weight", {"Weights": {"Passing": 10}}, [], Health.PASSING, 10),
    ("weight 0 is critical", {"Weights": {"Passing": 0, "Warning": 1}}, [], Health.CRITICAL, 1),
    ("negative weight is critical", {"Weights": {"Passing": -4}}, [], Health.CRITICAL, 1),
    (
        "warning weight 0 is critical",
        {"Weights": {"Passing": 5, "Warning": 0}},
        [check("warning")],
        Health.CRITICAL,
        1,
    ),
    ("weight clamped to 128", {"Weights": {"Passing": 500}}, [], Health.PASSING, 128),
]


@pytest.mark.parametrize(
    ("service_fields", "checks", "health", "weight"),
    [case[1:] for case in HEALTH_CASES],
    ids=[case[0] for case in HEALTH_CASES],
)
def test_endpoint_health_and_weight_follow_consul(service_fields, checks, health, weight):
    reg = registration(checks=checks, **service_fields)
    (dest,) = destinations(reg, gateway({"Name": "billing"}))
    (endpoint,) = dest.endpoints
    assert (endpoint.health, endpoint.weight) == (health, weight)


def test_a_node_check_registered_in_another_document_applies_to_every_service_on_the_node():
    node_only = {"Node": "n1", "Address": "10.0.0.1", "Check": check("critical", service_id="")}
    built = destinations(
        [registration("n1", "billing"), registration("n1", "ldap"), registration("n2", "ldap")],
        node_only,
        gateway({"Name": "billing"}, {"Name": "ldap"}),
    )
    dests = by_name(built)
    assert [e.health for e in dests["billing"].endpoints] == [Health.CRITICAL]
    assert [(e.node, e.health) for e in dests["ldap"].endpoints] == [
        ("n1", Health.CRITICAL),
        ("n2", Health.PASSING),
    ]


def test_address_is_the_service_address_else_the_node_address():
    """Consul's BestAddress: Service.Address when set, Node.Address otherwise."""
    built = destinations(
        [
            registration("n1", sid="b1", address="10.0.0.1"),
            registration("n2", sid="b2", address="10.0.0.2", Address="billing.example"),
        ],
        gateway({"Name": "billing"}),
    )
    assert [(e.address, e.instance_id) for e in built[0].endpoints] == [
        ("10.0.0.1", "b1"),
        ("billing.example", "b2"),
    ]


def test_instance_id_defaults_to_the_service_name_and_meta_is_kept():
    reg = {
        "Node": "n1",
        "Address": "10.0.0.1",
        "Service": {"Service": "billing", "Port": 80, "Meta": {"v": "2"}},
    }
    (dest,) = destinations(reg, gateway({"Name": "billing"}))
    assert dest.endpoints[0].instance_id == "billing"
    assert dict(dest.endpoints[0].meta) == {"v": "2"}


def test_endpoints_are_sorted_by_node_then_instance():
    regs = [registration(n, sid=f"b-{n}") for n in ("n3", "n1", "n2")]
    (dest,) = destinations(regs, gateway({"Name": "billing"}))
    assert [e.node for e in dest.endpoints] == ["n1", "n2", "n3"]


def test_an_instance_without_a_port_is_reported_and_left_out():
    docs, _ = parse([registration("n1", port=0), registration("n2")], gateway({"Name": "billing"}))
    (dest,), problems = build_destinations(docs, "legacy-gw", "dc1")
    assert [e.node for e in dest.endpoints] == ["n2"]
    assert [(p.where, "no port" in p.message) for p in problems] == [("[0].Service.Port", True)]


# --- linking ------------------------------------------------------------------------------


def test_wildcard_links_plain_services_and_an_explicit_entry_overrides_its_options():
    docs, _ = parse(
        [registration("n1", "billing"), registration("n1", "ldap"), registration("n1", "crm")],
        REFERENCE_GATEWAY,
    )
    built, _ = build_destinations(docs, "legacy-gw", "dc1")
    dests = by_name(built)
    assert sorted(dests) == ["billing", "crm", "ldap"]
    assert dests["crm"].from_wildcard and dests["crm"].tls == UpstreamTLS(ca_file="/etc/tgw/ca.pem")
    assert not dests["billing"].from_wildcard
    assert dests["billing"].tls.mode is TLSMode.MTLS
    # ldap is named without TLS options: the explicit entry wins, so it is plaintext.
    assert not dests["ldap"].from_wildcard
    assert dests["ldap"].tls.mode is TLSMode.PLAIN


@pytest.mark.parametrize(
    "connect_capable",
    [
        registration("n1", "web", Connect={"Native": True}),
        registration("n1", "web", Connect={"SidecarService": {"Port": 21000}}),
        registration("n1", "web", Kind="connect-proxy", Proxy={"DestinationServiceName": "x"}),
        registration("n1", "web", Kind="terminating-gateway"),
        [
            registration("n1", "web"),
            registration(
                "n1",
                "web-sidecar-proxy",
                Kind="connect-proxy",
                Proxy={"DestinationServiceName": "web"},
            ),
        ],
    ],
    ids=["native", "sidecar", "a proxy itself", "a gateway", "fronted by a connect-proxy"],
)
def test_wildcard_skips_connect_capable_services(connect_capable):
    """Since Consul PR #13958 a wildcard link picks up only services without sidecars."""
    built = destinations(connect_capable, registration("n9", "crm"), gateway({"Name": "*"}))
    assert [d.name for d in built] == ["crm"]


def test_a_connect_capable_service_named_explicitly_is_still_linked():
    native = registration("n1", "web", Connect={"Native": True})
    assert [d.name for d in destinations(native, gateway({"Name": "web"}))] == ["web"]


def test_a_linked_service_without_instances_still_routes_with_no_endpoints():
    (dest,) = destinations(gateway({"Name": "ldap", "CAFile": "/ca"}))
    assert dest == Destination(
        service=ServiceName("ldap"), datacenter="dc1", tls=UpstreamTLS(ca_file="/ca")
    )


def test_entries_for_other_gateways_are_ignored():
    built = destinations(
        registration(), gateway({"Name": "ldap"}, name="other-gw"), gateway({"Name": "billing"})
    )
    assert [d.name for d in built] == ["billing"]
    assert destinations(registration(), gateway({"Name": "billing"}, name="other-gw")) == ()


def test_registrations_in_another_datacenter_are_skipped():
    remote = registration("n2", sid="b2") | {"Datacenter": "dc2"}
    local = registration("n1", sid="b1") | {"Datacenter": "dc1"}
    (dest,) = destinations(remote, local, registration("n3", sid="b3"), gateway({"Name": "*"}))
    assert [e.node for e in dest.endpoints] == ["n1", "n3"]
    assert dest.datacenter == "dc1"


def test_wildcard_in_a_namespace_links_only_that_namespace():
    built = destinations(
        registration("n1", "billing", Namespace="ops"),
        registration("n1", "ldap"),
        gateway({"Name": "*", "Namespace": "ops"}),
    )
    assert [d.service for d in built] == [ServiceName("billing", "ops")]


# --- properties ---------------------------------------------------------------------------

_FIELD_NAMES = [
    "Kind",
    "Name",
    "Node",
    "Address",
    "Service",
    "Services",
    "Sources",
    "Checks",
    "Check",
    "Action",
    "Permissions",
    "Port",
    "Weights",
    "Passing",
    "Status",
    "ServiceID",
    "CAFile",
    "cert_file",
    "Namespace",
    "Meta",
    "Protocol",
    "Connect",
]
_KINDS = ["terminating-gateway", "service-intentions", "service-defaults", "*", "allow", "deny"]
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.sampled_from(_KINDS)
    | st.text(max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json_values, max_size=4))
def test_parsing_never_raises_on_arbitrary_json_only_reports_problems(values):
    docs, problems = parse_documents([(f"f{i}.json", v) for i, v in enumerate(values)])
    assert all(isinstance(p, ShapeProblem) and p.origin.endswith(".json") for p in problems)
    build_destinations(docs, "legacy-gw", "dc1")
    build_intentions(docs)


_names = st.sampled_from(["billing", "ldap", "crm", "web"])
_registrations = st.builds(
    lambda node, name, port, status, passing: registration(
        node,
        name,
        sid=f"{name}-{node}",
        port=port,
        checks=[check(status, f"{name}-{node}")],
        Weights={"Passing": passing, "Warning": 1},
    ),
    st.sampled_from(["n1", "n2", "n3"]),
    _names,
    st.integers(1, 65535),
    st.sampled_from(["passing", "warning", "critical"]),
    st.integers(-1, 200),
)
_node_checks = st.builds(
    lambda node, status: {"Node": node, "Address": "10.9.9.9", "Check": check(status, "", "serf")},
    st.sampled_from(["n1", "n2", "n3"]),
    st.sampled_from(["passing", "warning", "critical"]),
)


def _identity(document: dict[str, Any]) -> str:
    """Documents that would be duplicates of one another (one instance twice) collide."""
    if "Service" in document:
        return json.dumps([document["Node"], document["Service"]["Service"]])
    return json.dumps(document)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_registrations | _node_checks, max_size=8, unique_by=_identity),
    st.lists(_names, max_size=3, unique=True),
    st.randoms(use_true_random=False),
)
def test_destinations_do_not_depend_on_document_order(documents, linked, rnd):
    entry = gateway({"Name": "*", "CAFile": "/ca"}, *({"Name": n} for n in linked))
    forward = [entry, *documents]
    shuffled = forward[:]
    rnd.shuffle(shuffled)
    first, _ = parse(forward)
    second, _ = parse(*shuffled)  # one document per origin, in another order
    assert build_destinations(first, "legacy-gw", "dc1") == build_destinations(
        second, "legacy-gw", "dc1"
    )


# --- multi-datacenter ---------------------------------------------------------------------


def test_a_linked_service_registered_only_in_another_datacenter_lives_there():
    """Its datacenter comes from the registrations (Consul's ``?dc=`` answers carry it):
    the destination is in dc2, with dc2's instances, and the hop reaches it."""
    remote = registration("n2", sid="b2", checks=[{"CheckID": "c", "Status": "warning"}])
    (dest,) = destinations(remote | {"Datacenter": "dc2"}, gateway({"Name": "billing"}))
    assert dest.datacenter == "dc2"
    assert [(e.node, e.health.value) for e in dest.endpoints] == [("n2", "warning")]


def test_a_service_in_several_other_datacenters_takes_the_first_and_says_so():
    docs, _ = parse(
        registration("n3", sid="b3") | {"Datacenter": "dc3"},
        registration("n2", sid="b2") | {"Datacenter": "dc2"},
        gateway({"Name": "billing"}),
    )
    (dest,), problems = build_destinations(docs, "legacy-gw", "dc1")
    assert dest.datacenter == "dc2"
    assert len(problems) == 1 and "instances in dc2, dc3; using dc2" in problems[0].message


def test_remote_instances_do_not_join_the_wildcard():
    """A wildcard links the gateway's own datacenter only, as in Consul."""
    remote = registration("n2", "ledger") | {"Datacenter": "dc2"}
    assert destinations(remote, gateway({"Name": "*"})) == ()


def mesh_gateway_reg(node: str, port: int, dc: str | None = None) -> dict[str, Any]:
    reg = registration(node, "mesh-gateway", sid=f"mgw-{node}", port=port, Kind="mesh-gateway")
    return reg | ({"Datacenter": dc} if dc else {})


def test_mesh_gateways_are_grouped_by_datacenter():
    docs, problems = parse(
        mesh_gateway_reg("m2", 8443, "dc2"),
        mesh_gateway_reg("m1", 9443),  # no Datacenter: the gateway's own
        mesh_gateway_reg("m3", 7443, "dc2"),
        registration("n1"),
    )
    assert problems == []
    built = {g.datacenter: [str(e) for e in g.endpoints] for g in build_mesh_gateways(docs, "dc1")}
    assert built == {"dc1": ["10.0.0.1:9443"], "dc2": ["10.0.0.1:8443", "10.0.0.1:7443"]}


def test_mesh_destinations_are_the_connect_endpoints_of_this_datacenter():
    """Terminating gateway instances front what their entry links; sidecars front their
    service; plain instances, other datacenters and unregistered gateways do not count."""
    docs, problems = parse(
        gateway({"Name": "billing"}, {"Name": "ldap"}, name="tgw"),
        gateway({"Name": "ghost"}, name="not-running"),
        registration("g1", "tgw", sid="tgw-1", port=8443, Kind="terminating-gateway"),
        registration("g2", "tgw", sid="tgw-2", port=8443, Kind="terminating-gateway")
        | {"Datacenter": "dc2"},
        registration("n1", "billing"),
        registration(
            "n2",
            "web-sidecar-proxy",
            port=21000,
            Kind="connect-proxy",
            Proxy={"DestinationServiceName": "web"},
        ),
        registration("n3", "plain-only"),
    )
    assert problems == []
    built = {d.name: d for d in build_mesh_destinations(docs, "dc1")}
    assert set(built) == {"billing", "ldap", "web"}
    assert [e.node for e in built["billing"].endpoints] == ["g1"]
    assert [str(e) for e in built["web"].endpoints] == ["10.0.0.1:21000"]
    assert all(d.datacenter == "dc1" for d in built.values())
