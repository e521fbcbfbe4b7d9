"""build_connect_destinations: a mesh gateway's routes from ``/v1/health/connect`` answers."""

from __future__ import annotations

from gwcore.policy.consul_build import build_connect_destinations
from gwcore.policy.consul_shapes import parse_documents
from gwcore.policy.model import Health, ServiceName


def csn(node: str, sid: str, port: int, status: str = "passing", kind: str = "") -> dict:
    return {
        "Node": {"Node": node, "Address": "10.0.0.1", "Datacenter": "dc2"},
        "Service": {"ID": sid, "Service": sid, "Kind": kind, "Port": port},
        "Checks": [{"CheckID": f"{sid}-c", "Name": "c", "Status": status, "ServiceID": sid}],
    }


def test_each_answer_is_a_route_with_its_instances_health():
    """Every instance of a service's answer is an endpoint with its own checks' health; a
    service whose answer is empty (or holds only port-less instances) has no route."""
    answers = {
        ServiceName("billing"): [csn("a", "tgw-1", 8443, kind="terminating-gateway"),
                                 csn("b", "tgw-2", 8443, "warning", "terminating-gateway")],
        ServiceName("api"): [csn("c", "api-sidecar", 21000, "critical", "connect-proxy")],
        ServiceName("idle"): [],
        ServiceName("portless"): [csn("d", "p", 0)],
    }  # fmt: skip
    docs = {}
    for name, answer in answers.items():
        docs[name], problems = parse_documents([(str(name), answer)])
        assert problems == []
    built = build_connect_destinations(docs, "dc2", {ServiceName("billing"): "http"})
    assert [str(d.service) for d in built] == ["api", "billing"]
    api, billing = built
    assert billing.protocol == "http" and api.protocol == "tcp"
    assert [(e.node, e.port, e.health) for e in billing.endpoints] == [
        ("a", 8443, Health.PASSING),
        ("b", 8443, Health.WARNING),
    ]
    assert [e.health for e in api.endpoints] == [Health.CRITICAL]
    assert {d.datacenter for d in built} == {"dc2"}
