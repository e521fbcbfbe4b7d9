"""A linked service's protocol: its ``service-defaults`` ``Protocol``, else the
``proxy-defaults`` entry's ``Config.protocol`` (read as Consul reads it: the key in any
case, the value lower-cased, an unknown value served as ``tcp``), else ``tcp``
(issue 22, protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gwcore.plugins.file_catalog import decode_catalog_file
from gwcore.policy.consul_shapes import build_destinations, parse_documents

DUMP = Path(__file__).resolve().parents[1] / "data" / "consul-config-read"
GATEWAY = {
    "Kind": "terminating-gateway",
    "Name": "gw",
    "Services": [{"Name": "billing"}, {"Name": "ldap"}],
}


def _protocols(*documents: Any) -> dict[str, str]:
    docs, problems = parse_documents([("f.json", [GATEWAY, *documents])])
    assert problems == []
    destinations, _ = build_destinations(docs, "gw", "dc1")
    return {d.service.name: d.protocol for d in destinations}


def _proxy(config: Any, **extra: Any) -> dict[str, Any]:
    return {"Kind": "proxy-defaults", "Name": "global", "Config": config, **extra}


def test_without_any_defaults_entry_the_protocol_is_tcp():
    """No service-defaults and no proxy-defaults: Consul's default, tcp."""
    assert _protocols() == {"billing": "tcp", "ldap": "tcp"}


def test_proxy_defaults_protocol_applies_to_services_without_service_defaults():
    """proxy-defaults sets the protocol of every service that has no service-defaults;
    a service-defaults Protocol (even tcp) wins over it."""
    protocols = _protocols(
        _proxy({"protocol": "http"}),
        {"Kind": "service-defaults", "Name": "ldap", "Protocol": "tcp"},
    )
    assert protocols == {"billing": "http", "ldap": "tcp"}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"protocol": "grpc"}, "grpc"),
        ({"Protocol": "HTTP2"}, "http2"),  # mapstructure matches the key in any case
        ({"PROTOCOL": "Http"}, "http"),
        ({"protocol": "mongo"}, "tcp"),  # not HTTP-like: Consul's L4 listener
        ({"protocol": ""}, "tcp"),
        ({"local_connect_timeout_ms": 1000}, "tcp"),  # other proxy keys: ignored
        ({}, "tcp"),
    ],
)
def test_config_protocol_is_read_as_consul_reads_it(config: dict[str, Any], expected: str):
    """Config is an opaque map: only ``protocol`` is read, matched case-insensitively and
    lower-cased (ParseProxyConfig); a value that is not a protocol Consul knows is
    served at L4, as Consul's gateway does."""
    assert _protocols(_proxy(config))["billing"] == expected


def test_an_unknown_protocol_keeps_what_the_entry_declared():
    """What the entry says is kept beside what is served (check-config reports it)."""
    docs, _ = parse_documents([("f.json", _proxy({"protocol": "Mongo"}))])
    (proxy,) = docs.proxy_defaults
    assert (proxy.protocol, proxy.declared) == ("tcp", "mongo")


def test_the_config_read_dump_of_proxy_defaults_is_read():
    """The unchanged ``consul config read`` output (snake-case ``protocol`` key, Hash,
    indexes, MeshGateway, Expose...) is accepted."""
    dump = json.loads((DUMP / "proxy-defaults-global.json").read_text())
    dump["Config"]["protocol"] = "http"
    assert _protocols(dump)["billing"] == "http"


def test_a_proxy_defaults_entry_not_named_global_is_refused_with_consuls_words():
    """Consul accepts only ``global`` (an absent name becomes it): another name is a
    problem naming the key, and the entry is left out (the protocol stays tcp)."""
    docs, problems = parse_documents(
        [("f.json", [GATEWAY, _proxy({"protocol": "http"}, Name="x")])]
    )
    assert [(p.origin, p.where) for p in problems] == [("f.json", "[1].Name")]
    assert problems[0].message == 'invalid name ("x"), only "global" is supported'
    assert docs.proxy_defaults == ()
    unnamed = {"Kind": "proxy-defaults", "Config": {"protocol": "http"}}
    assert _protocols(unnamed)["billing"] == "http"


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        (_proxy(["protocol", "http"]), "Config"),
        (_proxy({"protocol": {"v": "http"}}), "Config.protocol"),
    ],
)
def test_a_config_of_the_wrong_type_is_a_problem_naming_the_key(entry: Any, where: str):
    """Config must be an object and its protocol a string (Consul's decoder refuses the
    entry otherwise)."""
    _, problems = parse_documents([("f.json", entry)])
    assert [p.where for p in problems] == [where]


def test_proxy_defaults_apply_per_partition():
    """Consul keeps one proxy-defaults per admin partition: another partition's entry
    does not set the protocol of the gateway's services."""
    other = _proxy({"protocol": "http"}, Partition="ap1")
    assert _protocols(other)["billing"] == "tcp"


def test_two_proxy_defaults_entries_conflict_and_the_first_wins():
    """A second ``global`` entry of the same partition is reported and left out."""
    docs, problems = parse_documents(
        [("a.json", _proxy({"protocol": "http"})), ("b.json", _proxy({"protocol": "grpc"}))]
    )
    assert [p.origin for p in problems] == ["b.json"]
    assert "already defined by a.json" in problems[0].message
    assert [p.protocol for p in docs.proxy_defaults] == ["http"]


def test_proxy_defaults_written_in_hcl(tmp_path: Path):
    """An .hcl file with Consul's HCL form (a Config block) reads like its JSON."""
    text = 'Kind = "proxy-defaults"\nName = "global"\nConfig {\n  protocol = "http2"\n}\n'
    docs, _, problems = decode_catalog_file(tmp_path / "proxy.hcl", text.encode())
    assert problems == []
    assert [p.protocol for p in docs.proxy_defaults] == ["http2"]
