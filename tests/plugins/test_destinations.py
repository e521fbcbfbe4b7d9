"""Consul destinations (service-defaults ``Destination {Addresses, Port}``) at a
terminating site fed by the file catalog: one route per address at Consul's
``destination.<address>.<name>.<ns>.<dc>.internal.<td>`` SNI, an IP as a static
endpoint and a host name resolved like host-name endpoints; a catalog service of the
same name wins; L7 intentions naming a destination are reported."""

from __future__ import annotations

import pytest_twisted

from gwcore.policy.destinations import destination_sni, parse_destination
from gwcore.policy.model import ServiceName
from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    Gateway,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    registration,
    sni_for,
    tls_connect,
    write_json,
)
from tests.plugins.test_tgw_subsets import refused


def defaults(port: int, *addresses: str) -> dict:
    return {
        "Kind": "service-defaults",
        "Name": "example",
        "Protocol": "tcp",
        "Destination": {"Addresses": list(addresses), "Port": port},
    }


def dsni(address: str) -> str:
    return destination_sni(ServiceName("example"), address, "dc1", TRUST_DOMAIN)


def call(port, name, files):
    with tls_connect(port, name, *files) as sock:
        return read_all(sock), peer_uris(sock)


def test_destination_sni_is_consuls():
    """Dots and colons of the address become dashes; the partition form uses internal-v1."""
    assert dsni("10.0.0.1") == f"destination.10-0-0-1.example.default.dc1.internal.{TRUST_DOMAIN}"
    assert dsni("::1").startswith("destination.--1.example.")
    assert destination_sni(ServiceName("e", "ns", "ap"), "a.b", "dc1", "td") == (
        "destination.a-b.e.ns.ap.dc1.internal-v1.td"
    )


def test_destination_validation_names_the_key():
    """No address, a bad address, a duplicate or a bad port: each a problem at its key."""
    _, problems = parse_destination({"Addresses": ["ok.example", "no spaces", "OK.example"]})
    assert {k for k, _ in problems} == {"Addresses[1]", "Addresses[2]", "Port"}
    entry, problems = parse_destination({"Addresses": ["::1"], "Port": "443"})
    assert problems == [] and entry is not None and entry.port == 443


@pytest_twisted.ensureDeferred
async def test_destination_routes_reach_each_address(gateway: Gateway, upstreams):
    """An IP address and a host name (localhost) each get their route, presenting the
    service's leaf; the plain service SNI is not a route; a catalog service of the same
    name then wins (the destination routes go, the service route appears)."""
    up = upstreams(hello(b"egress"))
    write_json(
        gateway.catalog / "catalog.json",
        [gateway_entry("example"), intentions("example", ("web", "allow")),
         defaults(up.port, "127.0.0.1", "localhost")],
    )  # fmt: skip
    await gateway.start()
    files = gateway.client_files("web")
    body, uris = await in_thread(call, gateway.port, dsni("127.0.0.1"), files)
    assert body == b"egress" and uris[0].endswith("/svc/example")
    assert (await in_thread(call, gateway.port, dsni("localhost"), files))[0] == b"egress"
    await refused(gateway.port, sni_for("example"), files)
    listed = {r["sni"]: r for r in gateway.site.current()[0].describe()}
    assert listed[dsni("localhost")]["destination"] == ["127.0.0.1", "localhost"]

    other = upstreams(hello(b"catalog"))
    write_json(
        gateway.catalog / "catalog.json",
        [gateway_entry("example"), intentions("example", ("web", "allow")),
         defaults(up.port, "127.0.0.1", "localhost"), registration("example", other.port)],
    )  # fmt: skip
    await gateway.wait_for(lambda: sni_for("example") in dict(gateway.site.current()[0]))
    assert (await in_thread(call, gateway.port, sni_for("example"), files))[0] == b"catalog"
    await refused(gateway.port, dsni("127.0.0.1"), files)


@pytest_twisted.ensureDeferred
async def test_l7_intentions_on_a_destination_are_reported_and_deny(gateway: Gateway, upstreams):
    """An intention with Permissions naming a destination stays in force (a warning, not
    a catalog error: the source stays healthy) and, as any L7 intention on an L4 route,
    denies the caller."""
    up = upstreams(hello(b"egress"))
    l7 = {"Kind": "service-intentions", "Name": "example",
          "Sources": [{"Name": "web", "Permissions": [{"Action": "allow",
                                                       "HTTP": {"PathPrefix": "/"}}]}]}  # fmt: skip
    write_json(gateway.catalog / "catalog.json",
               [gateway_entry("example"), l7, defaults(up.port, "127.0.0.1")])  # fmt: skip
    await gateway.start()
    (source,) = [s for s in gateway.site.sources if s.name == "file_catalog"]
    assert source.health().last_error is None
    files = gateway.client_files("web")
    assert (await in_thread(call, gateway.port, dsni("127.0.0.1"), files))[0] == b""
    assert up.accepted == 0
