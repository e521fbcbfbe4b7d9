"""``tgw check-config`` warns about L7 catalog inputs that cannot act as written (issue
22): L7 permissions to a destination served at L4 (a tcp protocol — Consul's own words
— or a service-defaults Destination), a Destination declaring an HTTP-like protocol, and
a proxy-defaults protocol Consul's gateway would serve as tcp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import gateway_entry, intentions, registration
from tests.runtime.test_crosscheck import CATALOG_KEY, check, warnings_of, write

L7_SOURCE = {
    "Name": "web",
    "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/api"}}],
}


def _l7_intentions(destination: str) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": destination, "Sources": [L7_SOURCE]}


def _messages(tmp_path: Path, capsys, docs: dict[str, object]) -> list[str]:
    path = write(tmp_path, docs)
    code, _, err = check(path, capsys)
    assert code == 0  # warnings only
    found = warnings_of(err, path)
    assert all(key == CATALOG_KEY for key, _ in found)
    prefix = f"{tmp_path / 'catalog'}/"  # each message names its catalog file
    assert all(message.startswith(prefix) for _, message in found)
    return [message.removeprefix(prefix) for _, message in found]


def test_l7_permissions_to_a_tcp_service_are_warned_in_consuls_words(tmp_path: Path, capsys):
    """billing has no service-defaults and proxy-defaults says nothing: tcp. Its L7
    intention gets Consul's refusal text, naming the file."""
    messages = _messages(
        tmp_path,
        capsys,
        {
            "gw.json": gateway_entry("billing"),
            "regs.json": [registration("billing", 9001)],
            "ixn.json": _l7_intentions("billing"),
        },
    )
    assert messages == [
        'ixn.json: service "billing" has protocol "tcp", which is incompatible with L7 '
        "intentions permissions (Consul refuses this entry; tgw denies every connection its "
        "L7 sources match)"
    ]


def test_no_warning_once_proxy_defaults_makes_the_service_http(tmp_path: Path, capsys):
    """The same intention is fine when proxy-defaults gives billing the http protocol;
    an L4 intention to a tcp service is never warned about."""
    messages = _messages(
        tmp_path,
        capsys,
        {
            "gw.json": gateway_entry("billing", "ldap"),
            "regs.json": [registration("billing", 9001), registration("ldap", 9002)],
            "proxy.json": {"Kind": "proxy-defaults", "Config": {"protocol": "http"}},
            "ldap.json": {"Kind": "service-defaults", "Name": "ldap", "Protocol": "tcp"},
            "ixn.json": _l7_intentions("billing"),
            "ixn-ldap.json": intentions("ldap", ("web", "allow")),
        },
    )
    assert messages == []


def test_a_destination_with_an_http_protocol_and_l7_permissions_is_warned(tmp_path: Path, capsys):
    """A linked service-defaults Destination is served at L4: declaring http is warned,
    and L7 permissions to it deny (warned too)."""
    destination = {
        "Kind": "service-defaults",
        "Name": "api",
        "Protocol": "http",
        "Destination": {"Addresses": ["api.example.com"], "Port": 443},
    }
    messages = _messages(
        tmp_path,
        capsys,
        {
            "gw.json": gateway_entry("api"),
            "api.json": destination,
            "ixn.json": _l7_intentions("api"),
        },
    )
    # (the existing "has no registered instance" warning for a destination comes first)
    assert messages[-2:] == [
        "ixn.json: service 'api' is a service-defaults Destination, served at L4 (Consul "
        "supports no L7 intentions for destinations): every connection its L7 sources "
        "match is denied",
        "api.json: service-defaults 'api' is a Destination with protocol 'http': tgw serves "
        "destinations at L4 (Consul supports no L7 intentions for destinations), so its "
        "requests are not inspected",
    ]


def test_a_proxy_defaults_protocol_tgw_serves_as_tcp_is_warned(tmp_path: Path, capsys):
    """Consul accepts any Config.protocol; one that is not a protocol it serves at L7
    (nor tcp) is served as tcp, and check-config says so."""
    messages = _messages(
        tmp_path,
        capsys,
        {
            "gw.json": gateway_entry("billing"),
            "regs.json": [registration("billing", 9001)],
            "proxy.json": {"Kind": "proxy-defaults", "Config": {"protocol": "Mongo"}},
        },
    )
    assert messages == [
        "proxy.json: proxy-defaults Config.protocol 'mongo' is not one of tcp, http, http2, "
        "grpc: served as tcp, as Consul's gateway serves a protocol that is not HTTP-like"
    ]
