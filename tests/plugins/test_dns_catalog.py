"""The dns_catalog plugin: its config section, the source against real DNS servers on
127.0.0.1 (Twisted Names and dnsmasq), and end to end through the gateway."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import Logger

from gwcore.contract.plugin_host import DEFAULT_PLUGINS
from gwcore.contract.providers import CatalogSource
from gwcore.plugins import dns_catalog
from gwcore.plugins.dns_catalog import DNSCatalogSource, read_settings
from gwcore.policy.dns_records import Family
from gwcore.policy.model import CatalogSnapshot, Health
from gwcore.testing import FakeSite, site_config
from tests.dns_dnsmasq import dnsmasq
from tests.dns_server import a, aaaa, dns_server, srv
from tests.harness import (
    hello,
    in_thread,
    intentions,
    request,
    sample_sum,
    sleep,
    sni_for,
    write_json,
)

__all__ = ["dns_server", "dnsmasq"]

# The stack entry: the built-in name once registered, its module path until then.
PLUGIN = dns_catalog.NAME if dns_catalog.NAME in DEFAULT_PLUGINS else dns_catalog.MODULE


def config(tmp_path: Path, section: dict, **site):
    return site_config(tmp_path, [PLUGIN], {PLUGIN: section}, **site)


def problems(tmp_path: Path, section: dict) -> list[str]:
    cfg = config(tmp_path, section)
    return [f"{p.key}: {p.message}" for p in dns_catalog.tgw_validate_site_config(cfg)]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await sleep(0.02)


# --- configuration ----------------------------------------------------------------


def test_settings_defaults_and_services(tmp_path):
    """Defaults apply; each service table becomes one destination with its own fields."""
    (tmp_path / "ca.pem").write_text("x")
    settings, found = read_settings(
        config(
            tmp_path,
            {
                "services": {
                    "ldap": {"srv": "_ldap._tcp.example.test"},
                    "db": {
                        "hostname": "db.example.test",
                        "port": 5432,
                        "protocol": "tcp",
                        "family": "ipv6",
                        "ca_file": "ca.pem",
                        "sni": "db.example.test",
                    },
                }
            },
        )
    )
    assert found == []
    assert settings.nameservers == ()
    assert (settings.policy.min_ttl, settings.policy.max_ttl, settings.policy.max_stale) == (
        1.0,
        300.0,
        3600.0,
    )
    assert (settings.timeout, settings.family) == (5.0, Family.PREFER_IPV4)
    db, ldap = settings.services
    assert (ldap.srv, ldap.family, ldap.kind) == (
        "_ldap._tcp.example.test",
        Family.PREFER_IPV4,
        "srv",
    )
    assert (db.hostname, db.port, db.family) == ("db.example.test", 5432, Family.IPV6)
    assert db.tls.ca_file == str(tmp_path / "ca.pem") and db.tls.sni == "db.example.test"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"services": {"x": {}}}, "services.x: needs exactly one of"),
        (
            {"services": {"x": {"srv": "_a._tcp.t", "hostname": "h.t", "port": 1}}},
            "services.x: needs exactly one of",
        ),
        ({"services": {"x": {"hostname": "h.t"}}}, "services.x.port: is required"),
        ({"services": {"x": {"srv": "_a._tcp.t", "port": 1}}}, "services.x.port: comes from"),
        ({"services": {"x": {"hostname": "bad name", "port": 1}}}, "not a DNS name"),
        ({"services": {"Bad_Name": {"srv": "_a._tcp.t"}}}, "is not a service name"),
        ({"services": {"x": {"srv": "_a._tcp.t", "cert_file": "c"}}}, "go together"),
        ({"services": {"x": {"srv": "_a._tcp.t", "sni": "s"}}}, "ca_file: is required"),
        ({"services": {"x": {"srv": "_a._tcp.t", "ca_file": "nope.pem"}}}, "does not exist"),
        ({"services": {"x": {"srv": "_a._tcp.t", "typo": 1}}}, "services.x.typo: unknown key"),
        ({"nameservers": ["dns.example.test"]}, "must be an IP address"),
        ({"min_ttl": "10s", "max_ttl": "1s"}, "max_ttl: must not be below min_ttl"),
        ({"min_ttl": "1ms"}, "min_ttl: must be at least"),
        ({"family": "ipv5"}, "family: must be one of"),
        ({"services": {"x": "srv"}}, "services.x: must be a table"),
    ],
)
def test_bad_sections_are_reported(tmp_path, section, expected):
    """Each mistake is one problem naming the dotted key, so check-config explains it."""
    found = problems(tmp_path, section)
    assert any(expected in p for p in found), found


def test_plugin_is_inert_when_not_in_the_stack(tmp_path):
    cfg = site_config(tmp_path, [])
    assert dns_catalog.tgw_validate_site_config(cfg) == []


# --- the source against real servers --------------------------------------------


def fake_site(tmp_path: Path, section: dict) -> FakeSite:
    site = FakeSite(config(tmp_path, section), tmp_path, reactor=reactor)
    site.log_events = []  # type: ignore[attr-defined]
    site.log = Logger(observer=site.log_events.append)  # type: ignore[attr-defined]
    return site


def section(server, services: dict, **extra) -> dict:
    return {
        "nameservers": [server.address],
        "min_ttl": "0.2s",
        "max_ttl": "1s",
        "timeout": "0.3s",
        "family": "ipv4",
        "services": services,
        **extra,
    }


def metric(site: FakeSite, name: str, **labels: str) -> float:
    value = sample_sum(site.metrics.registry, name, {"site": "main", **labels})
    return value if value is not None else 0.0


class Published:
    def __init__(self) -> None:
        self.snapshots: list[CatalogSnapshot] = []

    def __call__(self, snapshot: CatalogSnapshot) -> None:
        self.snapshots.append(snapshot)

    def endpoints(self, service: str) -> list[tuple[str, int, Health, int]]:
        (dest,) = [d for d in self.snapshots[-1].destinations if d.name == service]
        return [(e.address, e.port, e.health, e.weight) for e in dest.endpoints]


@pytest_twisted.ensureDeferred
async def test_srv_destination_with_priorities_and_weights(tmp_path, dns_server):
    """An SRV destination's first snapshot has the lowest priority's targets passing with
    their weights and the backup priority as warning; it is a CatalogSource, says nothing
    about intentions, and counts the resolution."""
    dns_server.set(
        "_billing._tcp.example.test",
        [
            srv(10, 60, 7001, "a.example.test"),
            srv(10, 40, 7002, "b.example.test"),
            srv(20, 10, 7003, "c.example.test"),
        ],
    )
    for host, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")):
        dns_server.set(f"{host}.example.test", [a(ip)])
    site = fake_site(
        tmp_path, section(dns_server, {"billing": {"srv": "_billing._tcp.example.test"}})
    )
    source = DNSCatalogSource(site)
    assert isinstance(source, CatalogSource)
    published = Published()
    await source.start(published)
    source.stop()
    assert len(published.snapshots) == 1
    snapshot = published.snapshots[0]
    assert snapshot.intentions is None and snapshot.source == "dns_catalog"
    assert published.endpoints("billing") == [
        ("127.0.0.2", 7001, Health.PASSING, 60),
        ("127.0.0.3", 7002, Health.PASSING, 40),
        ("127.0.0.4", 7003, Health.WARNING, 10),
    ]
    assert metric(site, "tgw_dns_resolutions_total", service="billing", result="success") == 1
    assert metric(site, "tgw_dns_endpoints", service="billing") == 3
    assert source.health().ok


@pytest_twisted.ensureDeferred
async def test_server_stopped_serves_stale_then_routes_with_no_endpoints(tmp_path, dns_server):
    """With the DNS server gone the destination keeps its endpoints (stale, counted) until
    max_stale has passed; then it stays in the catalog with zero endpoints, one clear
    error is logged, and the staleness metrics say so."""
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    site = fake_site(
        tmp_path,
        section(dns_server, {"db": {"hostname": "db.example.test", "port": 5432}}, max_stale="1s"),
    )
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    assert published.endpoints("db") == [("127.0.0.2", 5432, Health.PASSING, 1)]
    await dns_server.stop()
    await until(lambda: metric(site, "tgw_dns_stale", service="db") == 1, timeout=2)
    assert len(published.snapshots) == 1  # nothing changed for the route table
    assert metric(site, "tgw_dns_stale_served_total", service="db") >= 1
    assert metric(site, "tgw_dns_record_age_seconds", service="db") > 0
    await until(lambda: metric(site, "tgw_dns_expired_total", service="db") == 1, timeout=4)
    assert published.endpoints("db") == []
    assert metric(site, "tgw_dns_endpoints", service="db") == 0
    errors = [e for e in site.log_events if e["log_level"].name == "error"]
    assert len(errors) == 1
    assert "no healthy endpoints" in errors[0]["log_format"]
    assert "db: " in (source.health().last_error or "")
    source.stop()


@pytest_twisted.ensureDeferred
async def test_negative_answers_remove_endpoints_after_hold_nx_not_max_stale(tmp_path, dns_server):
    """Issue 18 item 4 (RFC 8767, RFC 2308): answered like Consul's DNS when every
    instance turned unhealthy (NXDOMAIN with an SOA), a destination keeps its endpoints
    only for hold_nx, then is routed with none, although max_stale is an hour; NODATA
    does the same. NXDOMAIN at start gives a routed destination with no endpoints."""
    dns_server.soa = (60, 0)  # Consul's default SOA min_ttl is 0
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    dns_server.set("db.example.test", [aaaa("::1")], ttl=0)
    dns_server.set("web.example.test", [a("127.0.0.3")], ttl=0)
    services = {
        "db": {"hostname": "db.example.test", "port": 5432},
        "web": {"hostname": "web.example.test", "port": 80},
        "ghost": {"hostname": "ghost.example.test", "port": 1},
    }
    site = fake_site(tmp_path, section(dns_server, services, max_stale="1h", hold_nx="0.6s"))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    assert published.endpoints("ghost") == []
    assert metric(site, "tgw_dns_resolutions_total", service="ghost", result="nxdomain") == 1
    dns_server.remove("db.example.test", 1)  # the A record; AAAA stays, so NODATA for A
    dns_server.remove("web.example.test")  # NXDOMAIN
    await until(lambda: metric(site, "tgw_dns_held", service="web") == 1, timeout=2)
    assert published.endpoints("web") == [("127.0.0.3", 80, Health.PASSING, 1)]
    assert metric(site, "tgw_dns_stale", service="web") == 0
    await until(lambda: published.endpoints("web") == [], timeout=3)
    await until(lambda: published.endpoints("db") == [], timeout=3)
    source.stop()
    assert metric(site, "tgw_dns_held", service="web") == 0
    assert metric(site, "tgw_dns_stale_served_total", service="web") == 0
    assert metric(site, "tgw_dns_endpoints", service="db") == 0


@pytest_twisted.ensureDeferred
async def test_consul_dns_and_hostname_through_dnsmasq(tmp_path, dnsmasq):
    """Against dnsmasq: a Consul-DNS-shaped SRV name and a hostname destination with both
    families resolve to the expected endpoints."""
    server = dnsmasq(
        [
            "--srv-host=billing.service.dc1.consul,node1.node.dc1.consul,8080,1,1",
            "--host-record=node1.node.dc1.consul,127.0.0.5",
            "--host-record=db.example.test,127.0.0.2,::2",
        ],
        domain="consul",
    )
    site = fake_site(
        tmp_path,
        section(
            server,
            {
                "billing": {"srv": "billing.service.dc1.consul"},
                "db": {"hostname": "db.example.test", "port": 5432, "family": "both"},
            },
        ),
    )
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    source.stop()
    assert published.endpoints("billing") == [("127.0.0.5", 8080, Health.PASSING, 1)]
    assert published.endpoints("db") == [
        ("127.0.0.2", 5432, Health.PASSING, 1),
        ("::2", 5432, Health.PASSING, 1),
    ]


# --- end to end -------------------------------------------------------------------


def dns_section(server, services: dict) -> str:
    lines = [
        f'[sites.main."{PLUGIN}"]',
        f"nameservers = {json.dumps([server.address])}",
        'min_ttl = "0.2s"',
        'max_ttl = "1s"',
        'timeout = "0.5s"',
        'family = "ipv4"',
    ]
    for name, table in services.items():
        lines.append(f'[sites.main."{PLUGIN}".services.{name}]')
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "srv_name", ["_billing._tcp.example.test", "billing.service.dc1.consul"], ids=["srv", "consul"]
)
@pytest_twisted.ensureDeferred
async def test_client_reaches_service_found_only_by_srv_and_follows_port_change(
    gateway, upstreams, dns_server, srv_name
):
    """A client's connection through the gateway reaches a service known only by an SRV
    record (plain or Consul-DNS-shaped); after the zone moves it to another port, new
    connections go to the new port."""
    first, second = upstreams(hello(b"first\n")), upstreams(hello(b"second\n"))
    dns_server.additional = srv_name.endswith(".consul")  # as Consul's DNS answers
    dns_server.set(srv_name, [srv(1, 1, first.port, "svc.example.test")], ttl=0)
    dns_server.set("svc.example.test", [a("127.0.0.1")], ttl=0)
    write_json(gateway.catalog / "intentions.json", [intentions("billing", ("web", "allow"))])
    gateway.plugins = [PLUGIN, "file_catalog", "builtin_ca", "intentions"]
    gateway.extra_site = dns_section(dns_server, {"billing": {"srv": srv_name}})
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"first\n"
    dns_server.set(srv_name, [srv(1, 1, second.port, "svc.example.test")], ttl=0)

    def routed_port() -> int:
        dest = gateway.site.current()[0].lookup(sni_for("billing"))
        return dest.endpoints[0].port if dest and dest.endpoints else 0

    await until(lambda: routed_port() == second.port, timeout=5)
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"second\n"
    assert first.accepted == 1 and second.accepted == 1
    assert gateway.metric("tgw_dns_resolutions_total", service="billing", result="success") >= 2


@pytest_twisted.ensureDeferred
async def test_catalog_freshness_moves_on_every_lookup_even_with_the_same_answer(
    tmp_path, dns_server
):
    """Against a real DNS server (Twisted Names on 127.0.0.1) whose answer never changes:
    each re-resolution (TTL 1 s, max_ttl 1 s) moves
    ``tgw_catalog_last_success_timestamp_seconds{source="dns_catalog"}`` and the
    source's ``last_success``, while no new snapshot is published; so an alert on its
    age fires for a failing resolver, never for a quiet one."""
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=1)
    services = {"db": {"hostname": "db.example.test", "port": 5432}}
    site = fake_site(tmp_path, section(dns_server, services))
    source = DNSCatalogSource(site)
    published = Published()
    await source.start(published)
    try:
        labels = {"site": "main", "source": "dns_catalog"}
        registry = site.metrics.registry
        first = registry.get_sample_value("tgw_catalog_last_success_timestamp_seconds", labels)
        assert first is not None and source.health().last_success is not None
        queried = dns_server.count("db.example.test")
        await until(lambda: dns_server.count("db.example.test") >= queried + 2, timeout=4)
        await until(
            lambda: (
                registry.get_sample_value("tgw_catalog_last_success_timestamp_seconds", labels)
                > first + 0.5
            ),
            timeout=2,
        )
        assert source.health().last_success > first + 0.5
        assert len(published.snapshots) == 1  # the answer never changed
    finally:
        source.stop()


@pytest_twisted.ensureDeferred
async def test_dns_series_carry_the_destination_namespace(tmp_path, dns_server):
    """Against a real DNS server: a destination in namespace ``team`` has its
    ``tgw_dns_*`` series labelled ``namespace="team"`` (with ``partition`` and
    ``datacenter``), like every per-service family of the gateway."""
    dns_server.set("db.example.test", [a("127.0.0.2")])
    services = {"db": {"hostname": "db.example.test", "port": 5432, "namespace": "team"}}
    site = fake_site(tmp_path, section(dns_server, services))
    source = DNSCatalogSource(site)
    await source.start(Published())
    try:
        labels = {"site": "main", "service": "db", "namespace": "team"}
        labels |= {"partition": "default", "datacenter": "dc1"}
        registry = site.metrics.registry
        assert registry.get_sample_value("tgw_dns_endpoints", labels) == 1
        assert (
            registry.get_sample_value("tgw_dns_resolutions_total", {**labels, "result": "success"})
            == 1
        )
        assert registry.get_sample_value("tgw_dns_record_age_seconds", labels) is not None
    finally:
        source.stop()
