"""The dns_catalog source means what resolvers mean (issue 18, items 4-8), against real
DNS servers on 127.0.0.1: the Twisted Names authoritative server the test controls
(tests/dns_server.py) and dnsmasq."""

from __future__ import annotations

import pytest_twisted

from gwcore.plugins.dns_catalog import DNSCatalogSource
from gwcore.policy.balancing import EndpointPicker
from tests.dns_dnsmasq import dnsmasq
from tests.dns_server import a, dns_server, srv
from tests.plugins.test_dns_catalog import Published, fake_site, metric, section, until

__all__ = ["dns_server", "dnsmasq", "metric", "until"]


@pytest_twisted.ensureDeferred
async def test_srv_priorities_are_tried_in_strict_order(tmp_path, dns_server):
    """RFC 2782: priority 30 gets a connection only when every priority-10 and priority-20
    target is unusable; within one priority, weights spread the first choice. Checked on
    the order the endpoint picker gives for many connections, from a real SRV answer."""
    dns_server.set(
        "_pg._tcp.example.test",
        [
            srv(10, 1, 7001, "a.example.test"),
            srv(20, 100, 7002, "b.example.test"),
            srv(20, 100, 7003, "c.example.test"),
            srv(30, 60000, 7004, "d.example.test"),
        ],
    )
    for host, ip in (
        ("a", "127.0.0.2"),
        ("b", "127.0.0.3"),
        ("c", "127.0.0.4"),
        ("d", "127.0.0.5"),
    ):
        dns_server.set(f"{host}.example.test", [a(ip)])
    site = fake_site(tmp_path, section(dns_server, {"pg": {"srv": "_pg._tcp.example.test"}}))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    source.stop()
    (dest,) = published.snapshots[-1].destinations
    picker = EndpointPicker()
    firsts: set[int] = set()
    for _ in range(40):
        ports = [e.port for e in picker.candidates(dest)]
        assert ports[0] == 7001
        # 7002/7003 in either order (weights), and the priority-30 target always last.
        assert sorted(ports[1:3]) == [7002, 7003] and ports[3] == 7004, ports
        firsts.add(ports[1])
    assert firsts == {7002, 7003}  # equal weights within priority 20 share the load
