"""The resolver means what resolvers mean (issue 18 items 5-7, issue 15 item 2), against
real DNS servers on 127.0.0.1: Twisted Names servers the test controls
(tests/dns_server.py) and dnsmasq."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.names import dns

from gwcore.net.resolver import DNSLookupError, DNSResolver, DNSWatch, WatchUpdate
from gwcore.policy.dns_records import Family, RefreshPolicy, Status, parse_nameserver
from tests.dns_dnsmasq import dnsmasq
from tests.dns_server import AuthoritativeServer, a, dns_server, srv
from tests.net.test_resolver import until

__all__ = ["dns_server", "dnsmasq"]

CONSUL_SRV = "billing.service.dc1.consul"


def resolver(*servers, timeout: float = 1.0, **options) -> DNSResolver:
    return DNSResolver(
        reactor, [parse_nameserver(s.address) for s in servers], timeout=timeout, **options
    )


@pytest.fixture
def second_server():
    server = AuthoritativeServer().start()
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.stop()))


def consul_like(server: AuthoritativeServer, instances: int) -> list[str]:
    """``instances`` healthy instances of billing, answered as Consul's DNS answers: over
    UDP without an OPT record at most udp_answer_limit (3), without TC."""
    server.udp_answer_limit = 3
    server.additional = True
    addresses = [f"127.0.1.{i + 1}" for i in range(instances)]
    server.set(
        CONSUL_SRV, [srv(1, 1, 8000 + i, f"node{i}.node.dc1.consul") for i in range(instances)]
    )
    for i, address in enumerate(addresses):
        server.set(f"node{i}.node.dc1.consul", [a(address)])
    return addresses


# --- item 5: EDNS0 ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_edns0_gets_every_instance_from_consul_like_dns(dns_server):
    """Queries carry an OPT record with a 4,096-byte payload, so a server that cuts
    answers to udp_answer_limit without TC (Consul) sends all 8 instances over UDP."""
    addresses = consul_like(dns_server, 8)
    r = resolver(dns_server)
    answer = await r.resolve_service(CONSUL_SRV, Family.IPV4)
    r.close()
    assert sorted(a for t in answer.targets for a in t.addresses) == sorted(addresses)
    (query,) = [q for q in dns_server.queries if q.name == CONSUL_SRV]
    assert (query.transport, query.edns) == ("udp", 4096)


@pytest_twisted.ensureDeferred
async def test_edns_payload_is_configurable_and_zero_sends_no_opt(dns_server):
    """``edns_payload`` sets the advertised size; 0 sends no OPT (and Consul then answers 3)."""
    consul_like(dns_server, 5)
    r = resolver(dns_server, edns_payload=1232)
    sized = await r.resolve_service(CONSUL_SRV, Family.IPV4)
    plain = resolver(dns_server, edns_payload=0)
    cut = await plain.resolve_service(CONSUL_SRV, Family.IPV4)
    r.close()
    plain.close()
    assert len(sized.targets) == 5 and len(cut.targets) == 3
    assert [q.edns for q in dns_server.queries if q.name == CONSUL_SRV] == [1232, 0]


@pytest_twisted.ensureDeferred
async def test_edns0_query_is_understood_by_dnsmasq(dnsmasq):
    """A real server (dnsmasq) answers the OPT-carrying query: 30 SRV records (well over
    512 bytes) arrive whole."""
    options = [
        f"--srv-host=_big._tcp.example.test,h{i}.example.test,{9000 + i},1,1" for i in range(30)
    ]
    options += [f"--host-record=h{i}.example.test,127.0.2.{i + 1}" for i in range(30)]
    server = dnsmasq(options)
    r = resolver(server)
    answer = await r.resolve_service("_big._tcp.example.test", Family.IPV4)
    r.close()
    assert sorted(t.record.port for t in answer.targets) == list(range(9000, 9030))
    assert all(t.addresses for t in answer.targets)


# --- item 6: nameserver failover ----------------------------------------------------


@pytest.mark.parametrize("mode", ["servfail", "refused"])
@pytest_twisted.ensureDeferred
async def test_servfail_or_refused_tries_the_next_nameserver(dns_server, second_server, mode):
    """As glibc and c-ares: SERVFAIL or REFUSED from the first server asks the second,
    which answers (the docs say the servers are tried in order)."""
    dns_server.mode = mode
    second_server.set("db.example.test", [a("127.0.0.9")])
    r = resolver(dns_server, second_server)
    answer = await r.resolve_addresses("db.example.test", Family.IPV4)
    r.close()
    assert answer.addresses == ("127.0.0.9",)
    assert dns_server.count("db.example.test") >= 1


@pytest_twisted.ensureDeferred
async def test_failover_to_dnsmasq_and_nxdomain_ends_the_search(dns_server, dnsmasq):
    """SERVFAIL from the first server, then dnsmasq answers; an NXDOMAIN from the first
    server is an answer: the second is not asked."""
    dns_server.mode = "servfail"
    real = dnsmasq(["--host-record=db.example.test,127.0.0.8"])
    r = resolver(dns_server, real)
    answer = await r.resolve_addresses("db.example.test", Family.IPV4)
    assert answer.addresses == ("127.0.0.8",)
    dns_server.mode = "answer"  # knows nothing: NXDOMAIN
    with pytest.raises(DNSLookupError) as nx:
        await r.resolve_addresses("db.example.test", Family.IPV4)
    r.close()
    assert nx.value.reason == "nxdomain"


@pytest_twisted.ensureDeferred
async def test_every_nameserver_failing_reports_the_failure(dns_server, second_server):
    dns_server.mode = second_server.mode = "servfail"
    r = resolver(dns_server, second_server)
    with pytest.raises(DNSLookupError) as failed:
        await r.resolve_addresses("db.example.test", Family.IPV4)
    r.close()
    assert failed.value.reason == "servfail"
    assert second_server.count("db.example.test") >= 1


# --- item 7: search list and ndots -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_search_domains_and_ndots_from_resolv_conf(dns_server, tmp_path):
    """As c-ares (Envoy) and glibc: a name with fewer than ndots dots is asked with each
    search domain first (Kubernetes short names), then as it is; one with enough dots is
    asked as it is first; a trailing dot is absolute. resolv.conf is re-read on change."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.1\nsearch ns1.svc.cluster.test svc.cluster.test\n")
    dns_server.set("db.svc.cluster.test", [a("127.0.0.5")])
    dns_server.set("api.example.test", [a("127.0.0.6")])
    r = resolver(dns_server, resolv_conf=str(conf))
    short = await r.resolve_addresses("db", Family.IPV4)
    assert short.addresses == ("127.0.0.5",) and short.canonical == "db.svc.cluster.test"
    asked = [q.name for q in dns_server.queries if q.type == dns.A]
    assert asked == ["db.ns1.svc.cluster.test", "db.svc.cluster.test"]
    dns_server.queries.clear()
    full = await r.resolve_addresses("api.example.test", Family.IPV4)
    assert full.addresses == ("127.0.0.6",)
    assert [q.name for q in dns_server.queries if q.type == dns.A] == ["api.example.test"]
    conf.write_text("search svc.cluster.test\noptions ndots:5 timeout:1\n")
    dns_server.queries.clear()
    await r.resolve_addresses("api.example.test", Family.IPV4)
    asked = [q.name for q in dns_server.queries if q.type == dns.A]
    assert asked == ["api.example.test.svc.cluster.test", "api.example.test"]
    with pytest.raises(DNSLookupError) as nx:
        await r.resolve_addresses("db.", Family.IPV4)
    r.close()
    assert nx.value.reason == "nxdomain"


@pytest_twisted.ensureDeferred
async def test_configured_search_list_overrides_resolv_conf(dns_server, tmp_path):
    """``search`` / ``ndots`` given to the resolver win over resolv.conf's."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("search other.test\n")
    dns_server.set("db.svc.cluster.test", [a("127.0.0.5")])
    r = resolver(dns_server, resolv_conf=str(conf), search=["svc.cluster.test"], ndots=2)
    answer = await r.resolve_addresses("db", Family.IPV4)
    r.close()
    assert answer.addresses == ("127.0.0.5",)
    assert "db.other.test" not in {q.name for q in dns_server.queries}


# --- issue 15 item 2: localhost and the hosts file ----------------------------------


@pytest_twisted.ensureDeferred
async def test_localhost_names_answer_loopback_without_any_lookup(dns_server):
    """RFC 6761: ``localhost`` and ``*.localhost`` are loopback, even with no DNS server
    answering (this one drops every query)."""
    dns_server.mode = "drop"
    r = resolver(dns_server, timeout=0.3)
    started = time.monotonic()
    v4 = await r.resolve_addresses("localhost", Family.PREFER_IPV4)
    both = await r.resolve_addresses("Billing.LOCALHOST.", Family.BOTH)
    v6 = await r.resolve_addresses("x.y.localhost", Family.IPV6)
    r.close()
    assert time.monotonic() - started < 0.2
    assert (v4.addresses, v4.source) == (("127.0.0.1",), "localhost")
    assert both.addresses == ("127.0.0.1", "::1")
    assert v6.addresses == ("::1",)
    assert dns_server.queries == []


@pytest_twisted.ensureDeferred
async def test_hosts_file_answers_first_and_is_reread_when_it_changes(dns_server, tmp_path):
    """A name in the hosts file is answered from it (no query); an edit is seen on the
    next lookup; a name it does not list goes to DNS."""
    hosts = tmp_path / "hosts"
    hosts.write_text("# test\n127.0.0.7 db.internal.test db\n::7 db.internal.test\n")
    dns_server.set("db.internal.test", [a("10.9.9.9")])
    dns_server.set("web.internal.test", [a("127.0.0.3")])
    r = resolver(dns_server, hosts_file=str(hosts))
    first = await r.resolve_addresses("DB.internal.test", Family.BOTH)
    assert (first.addresses, first.source) == (("127.0.0.7", "::7"), "hosts")
    assert dns_server.count("db.internal.test") == 0
    hosts.write_text("127.0.0.8 db.internal.test\n")
    second = await r.resolve_addresses("db.internal.test", Family.PREFER_IPV4)
    assert second.addresses == ("127.0.0.8",)
    web = await r.resolve_addresses("web.internal.test", Family.IPV4)
    hosts.unlink()
    gone = await r.resolve_addresses("db.internal.test", Family.IPV4)
    r.close()
    assert (web.addresses, web.source) == (("127.0.0.3",), "dns")
    assert (gone.addresses, gone.source) == (("10.9.9.9",), "dns")


@pytest_twisted.ensureDeferred
async def test_search_list_nxdomain_names_the_name_asked_with_the_shortest_negative_ttl(
    dns_server,
):
    """When every candidate is NXDOMAIN, the failure names the name asked for (not the
    last expansion) and carries the SOA negative TTL (RFC 2308)."""
    dns_server.soa = (30, 7)
    r = resolver(dns_server, search=["a.test", "b.test"], ndots=1)
    with pytest.raises(DNSLookupError) as nx:
        await r.resolve_addresses("ghost", Family.IPV4)
    r.close()
    assert (nx.value.reason, nx.value.name, nx.value.negative_ttl) == ("nxdomain", "ghost", 7.0)
    assert [q.name for q in dns_server.queries] == ["ghost.a.test", "ghost.b.test", "ghost"]


@pytest.mark.parametrize("mode", ["servfail", "refused", "drop"])
@pytest_twisted.ensureDeferred
async def test_no_authority_answering_is_served_stale_not_removed(dns_server, mode):
    """RFC 8767: SERVFAIL, REFUSED or silence from every nameserver keeps the last answer
    (stale, for max_stale) even with hold_nx 0, which would remove it on NXDOMAIN."""
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    r = resolver(dns_server, timeout=0.3)
    updates: list[WatchUpdate] = []
    w = DNSWatch(
        reactor,
        "db.example.test",
        lambda: r.resolve_addresses("db.example.test", Family.IPV4),
        RefreshPolicy(0.1, 1, max_stale=3600, hold_nx=0),
        updates.append,
    )
    await w.start()
    dns_server.mode = mode
    reason = {"drop": "timeout"}.get(mode, mode)
    await until(lambda: any(u.result == reason for u in updates))
    w.stop()
    r.close()
    assert w.status is Status.STALE and w.answer.addresses == ("127.0.0.2",)
