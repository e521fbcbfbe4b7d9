"""The dns_catalog source means what resolvers mean (issue 18, items 4-8), against real
DNS servers on 127.0.0.1: the Twisted Names authoritative server the test controls
(tests/dns_server.py) and dnsmasq."""

from __future__ import annotations

import json
import signal

import pytest
import pytest_twisted

from gwcore.plugins import dns_catalog
from gwcore.plugins.dns_catalog import DNSCatalogSource, read_settings
from gwcore.policy.balancing import EndpointPicker
from gwcore.policy.model import Health
from gwcore.runtime.config_check import check_config
from tests.dns_dnsmasq import dnsmasq
from tests.dns_server import a, dns_server, srv
from tests.plugins.test_dns_catalog import (
    Published,
    config,
    fake_site,
    metric,
    section,
    until,
)

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


@pytest_twisted.ensureDeferred
async def test_consul_dns_destination_keeps_every_instance_across_refreshes(tmp_path, dns_server):
    """Issue 18 item 5: against a server answering like Consul's DNS (at most 3 records
    over UDP without an OPT record, no TC), the destination has all 6 instances on every
    refresh, so the route table does not churn between random subsets."""
    dns_server.udp_answer_limit = 3
    dns_server.additional = True
    name = "billing.service.dc1.consul"
    dns_server.set(name, [srv(1, 1, 8000 + i, f"n{i}.node.dc1.consul") for i in range(6)], ttl=0)
    for i in range(6):
        dns_server.set(f"n{i}.node.dc1.consul", [a(f"127.0.3.{i + 1}")])
    site = fake_site(tmp_path, section(dns_server, {"billing": {"srv": name}}))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    await until(
        lambda: metric(site, "tgw_dns_resolutions_total", service="billing", result="success") >= 3
    )
    source.stop()
    assert len(published.snapshots) == 1  # refreshed, never changed
    assert sorted(p for _, p, _, _ in published.endpoints("billing")) == list(range(8000, 8006))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"hold_nx": "soon"}, "dns_catalog.hold_nx: must be a duration"),
        ({"edns_payload": 100}, "dns_catalog.edns_payload: must be 0 (no EDNS0) or at least 512"),
        ({"edns_payload": 70000}, "dns_catalog.edns_payload: must be between 0 and 65535"),
        ({"search": ["ok.test", "bad name"]}, "dns_catalog.search: 'bad name' is not a DNS name"),
        ({"ndots": 16}, "dns_catalog.ndots: must be between 0 and 15"),
    ],
)
def test_new_section_keys_are_validated_naming_file_and_key(tmp_path, options, expected):
    """Each bad value of the new keys is one problem naming the file and the dotted key."""
    cfg = config(tmp_path, {"services": {}, **options})
    found = [str(p) for p in dns_catalog.tgw_validate_site_config(cfg)]
    assert any(expected in p and "tgw.toml" in p for p in found), found


def test_new_section_keys_are_read(tmp_path):
    settings, found = read_settings(
        config(
            tmp_path,
            {"hold_nx": "5s", "edns_payload": 1232, "search": ["svc.test."], "ndots": 5},
        )
    )
    assert found == []
    assert (settings.policy.hold_nx, settings.edns_payload) == (5.0, 1232)
    assert (settings.search, settings.ndots) == (("svc.test",), 5)
    defaults, _ = read_settings(config(tmp_path, {}))
    assert (defaults.policy.hold_nx, defaults.edns_payload) == (30.0, 4096)
    assert (defaults.search, defaults.ndots) == (None, None)  # resolv.conf's


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"dns_hold_nx": "never"}, "sites.main.dns_hold_nx: must be a duration"),
        ({"dns_edns_payload": 511}, "sites.main.dns_edns_payload: must be 0 (no EDNS0)"),
        ({"dns_search": ["a..b"]}, "sites.main.dns_search: 'a..b' is not a DNS name"),
        ({"dns_ndots": -1}, "sites.main.dns_ndots: must be between 0 and 15"),
        ({"hosts_file": 3}, "sites.main.hosts_file: must be a string"),
    ],
)
def test_site_dns_keys_are_validated(tmp_path, options, expected):
    """The site's keys for host-name endpoints: bad values are refused, naming file and key."""
    path = tmp_path / "tgw.toml"
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    path.write_text(
        '[sites.main]\nlisten = "tcp:0"\nname = "gw"\ntrust_domain = "t.consul"\n'
        f"plugins = []\n{lines}\n"
    )
    checked = check_config(path)
    found = [str(p) for p in checked.problems]
    assert not checked.ok and any(expected in p and "tgw.toml" in p for p in found), found


@pytest_twisted.ensureDeferred
async def test_name_removed_from_dnsmasq_loses_its_endpoints_after_hold_nx(tmp_path, dnsmasq):
    """Issue 18 item 4 against dnsmasq: when the name leaves dnsmasq's hosts file (SIGHUP
    re-reads it) dnsmasq answers NXDOMAIN; the destination keeps its endpoint for
    hold_nx, then has none, although max_stale is an hour."""
    hosts = tmp_path / "dnsmasq.hosts"
    hosts.write_text("127.0.0.2 db.example.test\n")
    server = dnsmasq([f"--addn-hosts={hosts}"])
    services = {"db": {"hostname": "db.example.test", "port": 5432}}
    site = fake_site(tmp_path, section(server, services, max_stale="1h", hold_nx="0.5s"))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    assert published.endpoints("db") == [("127.0.0.2", 5432, Health.PASSING, 1)]
    hosts.write_text("")
    server.process.send_signal(signal.SIGHUP)
    await until(lambda: metric(site, "tgw_dns_held", service="db") == 1, timeout=3)
    assert published.endpoints("db") == [("127.0.0.2", 5432, Health.PASSING, 1)]
    await until(lambda: published.endpoints("db") == [], timeout=3)
    source.stop()
    assert metric(site, "tgw_dns_resolutions_total", service="db", result="nxdomain") >= 1
    assert metric(site, "tgw_dns_stale_served_total", service="db") == 0


@pytest_twisted.ensureDeferred
async def test_srv_target_dot_removes_endpoints_after_hold_nx(tmp_path, dns_server):
    """RFC 2782: a lone SRV record with target "." says the service is decidedly not
    available here; it is a negative answer (held for hold_nx, then no endpoints), not
    an outage served stale for max_stale."""
    dns_server.set("_pg._tcp.example.test", [srv(10, 1, 7001, "a.example.test")], ttl=0)
    dns_server.set("a.example.test", [a("127.0.0.2")])
    services = {"pg": {"srv": "_pg._tcp.example.test"}}
    site = fake_site(tmp_path, section(dns_server, services, max_stale="1h", hold_nx="0.4s"))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    assert [p for _, p, _, _ in published.endpoints("pg")] == [7001]
    dns_server.set("_pg._tcp.example.test", [srv(0, 0, 0, b"")], ttl=0)  # target "."
    await until(lambda: metric(site, "tgw_dns_held", service="pg") == 1, timeout=3)
    await until(lambda: published.endpoints("pg") == [], timeout=3)
    source.stop()
    assert metric(site, "tgw_dns_stale_served_total", service="pg") == 0
