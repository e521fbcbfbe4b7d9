"""DNSResolver and DNSWatch against real DNS servers on 127.0.0.1: a Twisted Names
authoritative server the test controls (tests/dns_server.py) and dnsmasq."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.names import dns

from gwcore.net.resolver import (
    AddressAnswer,
    DNSLookupError,
    DNSResolver,
    DNSWatch,
    WatchUpdate,
)
from gwcore.policy.dns_records import Family, RefreshPolicy, Status, parse_nameserver
from tests.dns_dnsmasq import dnsmasq
from tests.dns_server import a, aaaa, cname, dns_server, srv
from tests.harness import TimersOnClock, sleep

__all__ = ["dns_server", "dnsmasq"]

ZONE_SRV = "_ldap._tcp.example.test"


def resolver(server, timeout: float = 1.0) -> DNSResolver:
    r = DNSResolver(reactor, [parse_nameserver(server.address)], timeout=timeout)
    return r


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await sleep(0.02)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("127.0.0.1:8600", ("127.0.0.1", 8600)),
        ("::1", ("::1", 53)),
        ("[::1]:8600", ("::1", 8600)),
    ],
)
def test_parse_nameserver(text, expected):
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example.test", "127.0.0.1:0", "[::1", "1.2.3.4:x"])
def test_parse_nameserver_rejects(text):
    """A nameserver must be an IP (no resolver to find it by name) with a valid port."""
    with pytest.raises(ValueError):
        parse_nameserver(text)


@pytest_twisted.ensureDeferred
async def test_srv_with_two_priorities_and_weights(dns_server):
    """An SRV answer gives every record with priority, weight and port, each target's
    addresses, and the smallest TTL of every record used."""
    dns_server.set(
        ZONE_SRV,
        [
            srv(10, 60, 389, "a.example.test"),
            srv(10, 40, 389, "b.example.test"),
            srv(20, 1, 1389, "backup.example.test"),
        ],
        ttl=30,
    )
    dns_server.set("a.example.test", [a("127.0.0.2")], ttl=20)
    dns_server.set("b.example.test", [a("127.0.0.3")], ttl=25)
    dns_server.set("backup.example.test", [a("127.0.0.4")], ttl=12)
    r = resolver(dns_server)
    answer = await r.resolve_service(ZONE_SRV, Family.IPV4)
    r.close()
    got = [(t.record.priority, t.record.weight, t.record.port, t.addresses) for t in answer.targets]
    assert got == [
        (10, 40, 389, ("127.0.0.3",)),
        (10, 60, 389, ("127.0.0.2",)),
        (20, 1, 1389, ("127.0.0.4",)),
    ]
    assert answer.ttl == 12


@pytest_twisted.ensureDeferred
async def test_a_and_aaaa_by_family(dns_server):
    """ipv4/ipv6 ask one record type; both asks both; prefer_ipv4 falls back to IPv6."""
    dns_server.set("dual.example.test", [a("127.0.0.2"), a("127.0.0.3")], ttl=40)
    dns_server.set("dual.example.test", [aaaa("::1")], ttl=30)
    dns_server.set("v6only.example.test", [aaaa("::2")], ttl=30)
    r = resolver(dns_server)
    v4 = await r.resolve_addresses("dual.example.test", Family.IPV4)
    v6 = await r.resolve_addresses("dual.example.test", Family.IPV6)
    both = await r.resolve_addresses("dual.example.test", Family.BOTH)
    fallback = await r.resolve_addresses("v6only.example.test", Family.PREFER_IPV4)
    r.close()
    assert (v4.addresses, v4.ttl) == (("127.0.0.2", "127.0.0.3"), 40)
    assert (v6.addresses, v6.ttl) == (("::1",), 30)
    assert both.addresses == ("127.0.0.2", "127.0.0.3", "::1")
    assert fallback.addresses == ("::2",)
    assert dns_server.count("dual.example.test", dns.AAAA) == 2  # ipv4 never asked AAAA


@pytest.mark.parametrize("chase", [True, False], ids=["in-one-answer", "asked-step-by-step"])
@pytest_twisted.ensureDeferred
async def test_cname_chain(dns_server, chase):
    """A CNAME chain is followed to the addresses, whether the server sends the whole
    chain at once or one CNAME per answer; the TTL is the chain's smallest."""
    dns_server.chase = chase
    dns_server.set("www.example.test", [cname("edge.example.test")], ttl=50)
    dns_server.set("edge.example.test", [cname("host.example.test")], ttl=8)
    dns_server.set("host.example.test", [a("127.0.0.9")], ttl=60)
    r = resolver(dns_server)
    answer = await r.resolve_addresses("www.example.test", Family.IPV4)
    r.close()
    assert answer == AddressAnswer("www.example.test", ("127.0.0.9",), 8, "host.example.test")
    assert dns_server.count("host.example.test") == (0 if chase else 1)


@pytest_twisted.ensureDeferred
async def test_cname_loop_fails_cleanly(dns_server):
    """A CNAME loop is an error (cname_loop), not an endless lookup."""
    dns_server.chase = False
    dns_server.set("x.example.test", [cname("y.example.test")])
    dns_server.set("y.example.test", [cname("x.example.test")])
    r = resolver(dns_server)
    with pytest.raises(DNSLookupError) as info:
        await r.resolve_addresses("x.example.test", Family.IPV4)
    r.close()
    assert info.value.reason == "cname_loop"


@pytest_twisted.ensureDeferred
async def test_nxdomain_servfail_nodata_and_timeout(dns_server):
    """NXDOMAIN and SERVFAIL are distinct failures, NODATA an empty success, and a
    silent server a timeout after exactly the configured timeout (0.5 s on a fake
    clock: not failed a millisecond before, failed a millisecond after)."""
    dns_server.set("v6only.example.test", [aaaa("::2")])
    r = resolver(dns_server, timeout=0.5)
    with pytest.raises(DNSLookupError) as nx:
        await r.resolve_addresses("missing.example.test", Family.IPV4)
    nodata = await r.resolve_addresses("v6only.example.test", Family.IPV4)
    dns_server.mode = "servfail"
    with pytest.raises(DNSLookupError) as servfail:
        await r.resolve_addresses("v6only.example.test", Family.IPV4)
    r.close()
    dns_server.mode = "drop"
    clock = Clock()
    timed = DNSResolver(
        TimersOnClock(reactor, clock), [parse_nameserver(dns_server.address)], timeout=0.5
    )
    pending = timed.resolve_service(ZONE_SRV, Family.IPV4)
    await until(lambda: dns_server.count(ZONE_SRV) >= 1)  # the question is out, unanswered
    clock.advance(0.499)
    assert not pending.called
    clock.advance(0.002)
    assert pending.called
    with pytest.raises(DNSLookupError) as timeout:
        await pending
    timed.close()
    assert (nx.value.reason, servfail.value.reason, timeout.value.reason) == (
        "nxdomain",
        "servfail",
        "timeout",
    )
    assert nodata.empty


@pytest_twisted.ensureDeferred
async def test_truncated_udp_answer_is_retried_over_tcp(dns_server):
    """60 A records do not fit a 512-byte UDP answer: the server truncates, and the
    resolver asks again over TCP and gets all of them."""
    # 300 A records (~4.9 kB) fit neither 512 bytes nor the 4,096 EDNS0 payload.
    addresses = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(300)]
    dns_server.set("big.example.test", [a(x) for x in addresses])
    r = resolver(dns_server)
    answer = await r.resolve_addresses("big.example.test", Family.IPV4)
    r.close()
    assert sorted(answer.addresses) == sorted(addresses)
    assert dns_server.count("big.example.test", dns.A, "udp") == 1
    assert dns_server.count("big.example.test", dns.A, "tcp") == 1


@pytest_twisted.ensureDeferred
async def test_srv_additional_section_saves_queries(dns_server):
    """Targets' addresses sent in the SRV answer's additional section (as Consul does)
    are used without asking for them."""
    dns_server.additional = True
    dns_server.set("billing.service.dc1.consul", [srv(1, 1, 8080, "node1.node.dc1.consul")])
    dns_server.set("node1.node.dc1.consul", [a("127.0.0.5")])
    r = resolver(dns_server)
    answer = await r.resolve_service("billing.service.dc1.consul", Family.IPV4)
    r.close()
    assert answer.targets[0].addresses == ("127.0.0.5",)
    assert dns_server.count("node1.node.dc1.consul") == 0


@pytest_twisted.ensureDeferred
async def test_dnsmasq_srv_hosts_cname_and_nxdomain(dnsmasq):
    """Against dnsmasq (a server we did not write): SRV with two priorities, A+AAAA host
    records, a CNAME, and NXDOMAIN for an unknown name of its local domain."""
    server = dnsmasq(
        [
            f"--srv-host={ZONE_SRV},a.example.test,389,10,60",
            f"--srv-host={ZONE_SRV},b.example.test,1389,20,40",
            "--host-record=a.example.test,127.0.0.2,::2,7",
            "--host-record=b.example.test,127.0.0.3,9",
            "--cname=alias.example.test,a.example.test",
        ]
    )
    r = DNSResolver(reactor, [parse_nameserver(server.address)], timeout=1.0)
    service = await r.resolve_service(ZONE_SRV, Family.BOTH)
    alias = await r.resolve_addresses("alias.example.test", Family.IPV4)
    with pytest.raises(DNSLookupError) as nx:
        await r.resolve_addresses("missing.example.test", Family.IPV4)
    r.close()
    got = [(t.record.priority, t.record.port, t.addresses) for t in service.targets]
    assert got == [(10, 389, ("127.0.0.2", "::2")), (20, 1389, ("127.0.0.3",))]
    assert service.ttl <= 7
    assert alias.addresses == ("127.0.0.2",) and alias.canonical == "a.example.test"
    assert nx.value.reason == "nxdomain"


# --- DNSWatch ---------------------------------------------------------------------


def watch(server, name: str, policy: RefreshPolicy, timeout: float = 0.3):
    r = resolver(server, timeout=timeout)
    updates: list[WatchUpdate] = []
    w = DNSWatch(
        reactor,
        name,
        lambda: r.resolve_addresses(name, Family.IPV4),
        policy,
        updates.append,
    )
    return r, w, updates


class ClockedWatch:
    """A DNSWatch whose timers run on a fake clock (lookups are real, over loopback),
    counting the lookups it starts."""

    def __init__(self, server, name: str, policy: RefreshPolicy, timeout: float) -> None:
        self.clock = Clock()
        self.resolver = resolver(server, timeout=timeout)
        self.lookups = 0
        self.updates: list[WatchUpdate] = []

        def lookup():
            self.lookups += 1
            return self.resolver.resolve_addresses(name, Family.IPV4)

        self.watch = DNSWatch(
            TimersOnClock(reactor, self.clock), name, lookup, policy, self.updates.append
        )

    async def advance(self, seconds: float) -> None:
        """Move the clock; then wait (real time) for a lookup it started to finish."""
        self.clock.advance(seconds)
        await until(lambda: len(self.updates) == self.lookups)

    def close(self) -> None:
        self.watch.stop()
        self.resolver.close()


@pytest_twisted.ensureDeferred
async def test_watch_follows_ttl_changes(dns_server):
    """The name is asked again when its TTL runs out (not on a fixed timer): a record
    change is seen after the TTL, and a longer TTL slows the refreshes down (TTL 0
    clamped up to the 0.2 s floor, TTL 1 down to the 0.6 s ceiling; fake clock)."""
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)  # clamped up to the floor
    cw = ClockedWatch(dns_server, "db.example.test", RefreshPolicy(0.2, 0.6, 5), timeout=0.3)
    try:
        await cw.watch.start()
        assert cw.watch.answer.addresses == ("127.0.0.2",)
        assert cw.updates[-1].step.refresh_in == pytest.approx(0.2)
        dns_server.set("db.example.test", [a("127.0.0.3")], ttl=1)  # ceiling 0.6 applies
        await cw.advance(0.199)
        assert cw.lookups == 1  # not before the TTL has run out
        await cw.advance(0.002)
        assert cw.lookups == 2 and cw.watch.answer.addresses == ("127.0.0.3",)
        assert cw.updates[-1].step.refresh_in == pytest.approx(0.6)
        for lookups in (3, 4):  # one lookup per 0.6 s now, not one per 0.2 s floor
            await cw.advance(0.598)
            assert cw.lookups == lookups - 1
            await cw.advance(0.002)
            assert cw.lookups == lookups
    finally:
        cw.close()


@pytest_twisted.ensureDeferred
async def test_watch_serves_stale_while_server_is_down_then_expires(dns_server):
    """With the server stopped, the last good answer stays in force (stale) until TTL +
    max_stale have passed; then nothing is, once. When the server is back, it recovers.
    (Timers on a fake clock: expiry comes at exactly TTL 0.2 s + max_stale 1.0 s after
    the last success, however long the real lookups took.)"""
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    policy = RefreshPolicy(min_ttl=0.2, max_ttl=1, max_stale=1.0)
    cw = ClockedWatch(dns_server, "db.example.test", policy, timeout=0.2)
    try:
        await cw.watch.start()
        await dns_server.stop()
        step = 0.05
        while cw.watch.status is not Status.EXPIRED:
            assert cw.clock.seconds() < 5, "never expired"
            if cw.watch.status is Status.STALE:
                assert cw.watch.answer is not None
                assert cw.watch.answer.addresses == ("127.0.0.2",)
            await cw.advance(step)
        expired_at = cw.clock.seconds()
        assert 0.2 + 1.0 - 1e-9 <= expired_at < 0.2 + 1.0 + step
        assert cw.watch.answer is None
        updates = cw.updates
        assert [u.step.event for u in updates].count("expired") == 1
        assert {u.result for u in updates if u.step.status is Status.STALE} == {"timeout"}
        dns_server.start()
        while cw.watch.status is not Status.FRESH:
            assert cw.clock.seconds() < 60, "never recovered"
            await cw.advance(step)
        assert cw.watch.answer.addresses == ("127.0.0.2",)
        assert updates[-1].step.event == "recovered"
    finally:
        cw.close()


@pytest_twisted.ensureDeferred
async def test_watch_holds_then_removes_an_answer_after_nxdomain(dns_server):
    """A name that disappears (NXDOMAIN after success, with an SOA as Consul sends when
    every instance is unhealthy) is not an outage: its last answer is held for hold_nx
    (not max_stale), then removed; it is asked again at the SOA's negative TTL."""
    dns_server.soa = (30, 1)  # negative TTL = min(SOA TTL, MINIMUM) = 1 s
    dns_server.set("db.example.test", [a("127.0.0.2")], ttl=0)
    policy = RefreshPolicy(0.2, 5, max_stale=3600, hold_nx=0.5)
    r, w, updates = watch(dns_server, "db.example.test", policy)
    await w.start()
    dns_server.remove("db.example.test")
    await until(lambda: any(u.result == "nxdomain" for u in updates), timeout=2)
    assert w.status is Status.HELD and w.answer.addresses == ("127.0.0.2",)
    held = time.monotonic()
    await until(lambda: w.status is Status.NEGATIVE, timeout=3)
    removed_after = time.monotonic() - held
    assert w.answer is None
    assert 0.3 <= removed_after <= 1.5
    events = [u.step.event for u in updates if u.step.event]
    assert events == ["held", "removed"]
    assert updates[-1].step.refresh_in == pytest.approx(1.0)  # the SOA's negative TTL
    w.stop()
    r.close()
