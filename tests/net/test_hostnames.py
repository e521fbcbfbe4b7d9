"""Hostname endpoints end to end: instances registered by hostname, resolved through a
real DNS server (Twisted Names, authoritative, on 127.0.0.1) to loopback addresses."""

from __future__ import annotations

from collections import Counter

import pytest_twisted

from tests.dns_server import a, dns_server
from tests.harness import (
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)

__all__ = ["dns_server"]


def link_hostnames(gateway, instances: list[tuple[str, int]]) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    regs = [registration("billing", port, address=host) for host, port in instances]
    write_json(gateway.catalog / "regs.json", regs)
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("*", "allow")))


def use_dns(gateway, server) -> None:
    gateway.site_options.update(
        dns_nameservers=[server.address], dns_min_ttl="0.1s", dns_max_stale="1h", dns_timeout="1s"
    )


async def answers(gateway, n: int) -> Counter:
    files = gateway.client_files("web")
    tally: Counter = Counter()
    for _ in range(n):
        tally[await in_thread(request, gateway.port, sni_for("billing"), files)] += 1
    return tally


@pytest_twisted.ensureDeferred
async def test_every_hostname_instance_receives_traffic(gateway, upstreams, dns_server):
    """Two instances registered by hostname, on different loopback addresses, both serve
    (Consul's issue #16040 used only the first)."""
    one = upstreams(hello(b"one"), host="127.0.0.2")
    two = upstreams(hello(b"two"), host="127.0.0.3")
    dns_server.set("one.example.test", [a("127.0.0.2")], ttl=30)
    dns_server.set("two.example.test", [a("127.0.0.3")], ttl=30)
    link_hostnames(gateway, [("one.example.test", one.port), ("two.example.test", two.port)])
    use_dns(gateway, dns_server)
    await gateway.start()
    route = gateway.site.current()[0].lookup(sni_for("billing"))
    assert {(e.address, e.port) for e in route.endpoints} == {
        ("127.0.0.2", one.port),
        ("127.0.0.3", two.port),
    }
    tally = await answers(gateway, 6)
    assert tally[b"one"] == 3 and tally[b"two"] == 3


@pytest_twisted.ensureDeferred
async def test_a_changed_record_is_followed_after_its_ttl(gateway, upstreams, dns_server):
    """When the name moves to another address, new connections follow once the TTL ran out."""
    old = upstreams(hello(b"old"), host="127.0.0.2")
    new = upstreams(hello(b"new"), port=old.port, host="127.0.0.4")
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    link_hostnames(gateway, [("db.example.test", old.port)])
    use_dns(gateway, dns_server)
    await gateway.start()
    assert await answers(gateway, 1) == {b"old": 1}
    dns_server.set("db.example.test", [a("127.0.0.4")], ttl=0)
    route = lambda: gateway.site.current()[0].lookup(sni_for("billing"))  # noqa: E731
    await gateway.wait_for(lambda: [e.address for e in route().endpoints] == ["127.0.0.4"])
    assert await answers(gateway, 2) == {b"new": 2}
    assert new.accepted == 2 and old.accepted == 1
    assert gateway.metric("tgw_hostname_resolutions_total", result="success") >= 2


@pytest_twisted.ensureDeferred
async def test_the_last_answer_keeps_serving_while_dns_is_down(gateway, upstreams, dns_server):
    """The DNS server going away keeps the last good addresses in force (serve stale)."""
    up = upstreams(hello(b"still"), host="127.0.0.2")
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    link_hostnames(gateway, [("db.example.test", up.port)])
    use_dns(gateway, dns_server)
    await gateway.start()
    await dns_server.stop()
    await gateway.wait_for(
        lambda: gateway.metric("tgw_hostname_resolutions_total", result="timeout") >= 1, timeout=10
    )
    assert await answers(gateway, 2) == {b"still": 2}


@pytest_twisted.ensureDeferred
async def test_localhost_instance_is_reached_with_no_dns_answering(gateway, upstreams, dns_server):
    """Issue 15 item 2: an instance registered at ``localhost`` (as Consul's
    terminating-gateway host-name cases register) is reached although the only DNS
    server drops every query: RFC 6761 answers it without a lookup. The metric and the
    access log say the localhost rule answered."""
    up = upstreams(hello(b"local"), host="127.0.0.1")
    dns_server.mode = "drop"
    link_hostnames(gateway, [("localhost", up.port)])
    use_dns(gateway, dns_server)
    await gateway.start()
    assert await answers(gateway, 2) == {b"local": 2}
    assert dns_server.queries == []
    assert gateway.metric("tgw_hostname_answers_total", source="localhost") >= 1
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 2)
    record = gateway.access_records()[-1]
    assert (record["endpoint_hostname"], record["endpoint_source"]) == ("localhost", "localhost")
    assert record["endpoint"] == f"127.0.0.1:{up.port}"


@pytest_twisted.ensureDeferred
async def test_hosts_file_entry_is_used_before_dns_and_followed_when_edited(
    gateway, upstreams, dns_server
):
    """A host name the hosts file lists (``hosts_file`` points at a test file) is
    answered from it before DNS — here DNS answers another address — and an edit of
    the file moves new connections; the access log says ``hosts``."""
    first = upstreams(hello(b"first"), host="127.0.0.2")
    moved = upstreams(hello(b"moved"), port=first.port, host="127.0.0.3")
    hosts = gateway.root / "hosts"
    hosts.write_text("127.0.0.2 db.internal.test\n")
    dns_server.set("db.internal.test", [a("127.0.0.9")], ttl=0)
    link_hostnames(gateway, [("db.internal.test", first.port)])
    use_dns(gateway, dns_server)
    gateway.site_options["hosts_file"] = "hosts"
    await gateway.start()
    assert await answers(gateway, 1) == {b"first": 1}
    hosts.write_text("# moved\n127.0.0.3   db.internal.test\n")
    route = lambda: gateway.site.current()[0].lookup(sni_for("billing"))  # noqa: E731
    await gateway.wait_for(lambda: [e.address for e in route().endpoints] == ["127.0.0.3"])
    assert await answers(gateway, 1) == {b"moved": 1}
    assert (first.accepted, moved.accepted) == (1, 1)
    assert dns_server.count("db.internal.test") == 0
    assert gateway.metric("tgw_hostname_answers_total", source="hosts") >= 2
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 2)
    assert gateway.access_records()[-1]["endpoint_source"] == "hosts"


@pytest_twisted.ensureDeferred
async def test_short_name_found_through_the_site_search_list(gateway, upstreams, dns_server):
    """Issue 18 item 7 at a site: an instance registered as ``db`` (a Kubernetes short
    name) is found as ``db.svc.cluster.test`` through ``dns_search`` / ``dns_ndots``."""
    up = upstreams(hello(b"short"), host="127.0.0.2")
    dns_server.set("db.svc.cluster.test", [a("127.0.0.2")], ttl=30)
    link_hostnames(gateway, [("db", up.port)])
    use_dns(gateway, dns_server)
    gateway.site_options.update(
        dns_search=["ns1.svc.cluster.test", "svc.cluster.test"], dns_ndots=5
    )
    await gateway.start()
    assert await answers(gateway, 1) == {b"short": 1}
    assert dns_server.count("db.ns1.svc.cluster.test") >= 1  # asked first, NXDOMAIN


@pytest_twisted.ensureDeferred
async def test_removed_name_loses_its_endpoints_after_dns_hold_nx(gateway, upstreams, dns_server):
    """Issue 18 item 4 at a site: a host name that becomes NXDOMAIN keeps its address
    for ``dns_hold_nx`` only, although ``dns_max_stale`` is an hour."""
    up = upstreams(hello(b"gone"), host="127.0.0.2")
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    link_hostnames(gateway, [("db.example.test", up.port)])
    use_dns(gateway, dns_server)
    gateway.site_options["dns_hold_nx"] = "0.5s"
    await gateway.start()
    assert await answers(gateway, 1) == {b"gone": 1}
    dns_server.remove("db.example.test")
    route = lambda: gateway.site.current()[0].lookup(sni_for("billing"))  # noqa: E731
    await gateway.wait_for(lambda: route().endpoints == (), timeout=5)
    assert gateway.metric("tgw_hostname_resolutions_total", result="nxdomain") >= 1
