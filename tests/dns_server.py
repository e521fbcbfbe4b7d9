"""A real authoritative DNS server for tests: Twisted Names on 127.0.0.1, UDP and TCP.

The zone lives in memory and the test changes it while the server runs
(:meth:`AuthoritativeServer.set`, :meth:`~AuthoritativeServer.remove`). The server
answers like an authoritative one: CNAME chains inside the zone are followed in one
answer, a name it does not know is NXDOMAIN, a known name without the asked type is
NODATA (``chase = False`` answers a CNAME alone, as for a target in another
zone); with ``soa`` set, negative answers carry an SOA in the authority section
(RFC 2308), as Consul's DNS does. Over UDP, an answer longer than 512 bytes — or
than the payload the query's EDNS0 OPT record advertises (RFC 6891) — is sent
truncated (TC set, no records), as RFC 1035 servers do, so clients must retry over
TCP. ``udp_answer_limit`` answers like Consul's DNS: a UDP query without an OPT
record gets at most that many answer records, *without* TC. ``mode`` can make it
answer SERVFAIL or REFUSED or drop queries, and :meth:`stop`/:meth:`start` take it
off the network and back on the same port. Every query is logged in ``queries``
(with the EDNS payload it advertised, 0 for none).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.names import dns, server

UDP_LIMIT = 512


@dataclass(frozen=True)
class Query:
    name: str
    type: int
    transport: str  # "udp" | "tcp"
    edns: int = 0  # the UDP payload size of the query's OPT record; 0: none


def srv(priority: int, weight: int, port: int, target: str | bytes) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target)


def a(address: str) -> dns.Record_A:
    return dns.Record_A(address)


def aaaa(address: str) -> dns.Record_AAAA:
    return dns.Record_AAAA(address)


def cname(target: str) -> dns.Record_CNAME:
    return dns.Record_CNAME(target)


_TYPES = {
    dns.Record_SRV: dns.SRV,
    dns.Record_A: dns.A,
    dns.Record_AAAA: dns.AAAA,
    dns.Record_CNAME: dns.CNAME,
}


class _Factory(server.DNSServerFactory):
    def __init__(self, owner: AuthoritativeServer) -> None:
        super().__init__()
        self.owner = owner

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        self.owner._answer(self, message, protocol, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        if address is not None and len(message.toStr()) > self.owner.udp_limit:
            message.answers, message.authority, message.additional = [], [], []
            message.trunc = 1
        super().sendReply(protocol, message, address)


class AuthoritativeServer:
    """An in-memory zone served on ``127.0.0.1:port`` (UDP and TCP)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[dns.RRHeader]] = {}
        self.queries: list[Query] = []
        self.mode = "answer"  # "answer" | "servfail" | "drop"
        self.additional = False  # put SRV targets' addresses in the additional section
        self.chase = True  # follow CNAMEs inside the zone (False: answer the CNAME alone)
        self.soa: tuple[int, int] | None = None  # (record TTL, MINIMUM) for negative answers
        self.udp_answer_limit: int | None = None  # Consul's: cut UDP answers without OPT
        self.udp_limit = UDP_LIMIT  # of the reply being sent
        self.port = 0
        self._factory = _Factory(self)
        self._udp: Any = None
        self._tcp: Any = None

    # --- the zone -----------------------------------------------------------------

    def set(self, name: str, records: list[Any], ttl: int = 60) -> None:
        """Replace every record of ``name`` of the given records' type."""
        key = name.lower().rstrip(".")
        types = {_TYPES[type(r)] for r in records}
        assert len(types) == 1, "one record type per call"
        (rtype,) = types
        self.records[(key, rtype)] = [
            dns.RRHeader(key, rtype, dns.IN, ttl, r, auth=True) for r in records
        ]

    def remove(self, name: str, rtype: int | None = None) -> None:
        key = name.lower().rstrip(".")
        for k in [k for k in self.records if k[0] == key and rtype in (None, k[1])]:
            del self.records[k]

    def count(self, name: str, rtype: int | None = None, transport: str | None = None) -> int:
        key = name.lower().rstrip(".")
        return sum(
            1
            for q in self.queries
            if q.name == key and rtype in (None, q.type) and transport in (None, q.transport)
        )

    def _lookup(self, name: str, rtype: int) -> tuple[list[dns.RRHeader], bool]:
        """(answers following in-zone CNAMEs, whether the name exists at all)."""
        known = any(k[0] == name for k in self.records)
        answers: list[dns.RRHeader] = []
        current = name
        for _ in range(16):
            found = self.records.get((current, rtype))
            if found:
                answers += found
                break
            alias = self.records.get((current, dns.CNAME))
            if not alias or rtype == dns.CNAME:
                break
            answers += alias
            if not self.chase:
                break
            current = alias[0].payload.name.name.decode().lower()
        return answers, known

    def _answer(self, factory: _Factory, message: dns.Message, protocol: Any, address: Any) -> None:
        query = message.queries[0]
        name = query.name.name.decode().lower().rstrip(".")
        opt = [r for r in message.additional if r.type == dns.OPT]
        edns = opt[0].cls if opt else 0  # an OPT record's CLASS is its UDP payload size
        transport = "udp" if address is not None else "tcp"
        self.queries.append(Query(name, query.type, transport, edns))
        self.udp_limit = max(UDP_LIMIT, edns)
        if self.mode == "drop":
            return
        if self.mode in ("servfail", "refused"):
            code = dns.ESERVER if self.mode == "servfail" else dns.EREFUSED
            reply = factory._responseFromMessage(message=message, rCode=code)
            factory.sendReply(protocol, reply, address)
            return
        answers, known = self._lookup(name, query.type)
        additional: list[dns.RRHeader] = []
        if self.additional and query.type == dns.SRV:
            for record in answers:
                target = record.payload.target.name.decode().lower()
                for rtype in (dns.A, dns.AAAA):
                    additional += self.records.get((target, rtype), [])
        rcode = dns.OK if known else dns.ENAME
        if transport == "udp" and not edns and self.udp_answer_limit is not None:
            answers = answers[: self.udp_answer_limit]  # Consul: no TC bit
        authority: list[dns.RRHeader] = []
        if self.soa is not None and not answers:
            ttl, minimum = self.soa
            record = dns.Record_SOA(
                mname="ns.example.test", rname="hostmaster.example.test", minimum=minimum
            )
            authority = [dns.RRHeader("example.test", dns.SOA, dns.IN, ttl, record, auth=True)]
        reply = factory._responseFromMessage(
            message=message,
            rCode=rcode,
            answers=answers,
            authority=authority,
            additional=additional,
        )
        reply.auth = 1
        factory.sendReply(protocol, reply, address)

    # --- the network --------------------------------------------------------------

    def start(self) -> AuthoritativeServer:
        """Listen on UDP and TCP, on the same port (a free one the first time)."""
        for _ in range(20):
            # A fresh protocol per try: a stopped port does not release its protocol at once.
            protocol = dns.DNSDatagramProtocol(self._factory)
            udp = reactor.listenUDP(self.port, protocol, interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self._factory, interface="127.0.0.1")
            except Exception:
                udp.stopListening()
                if self.port:
                    raise
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            return self
        raise RuntimeError("no port free for both UDP and TCP")

    async def stop(self) -> None:
        """Stop listening (queries then go unanswered: clients time out)."""
        udp, tcp, self._udp, self._tcp = self._udp, self._tcp, None, None
        if udp is not None:
            await udp.stopListening()
        if tcp is not None:
            await tcp.stopListening()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dns_server():
    """A running :class:`AuthoritativeServer`, stopped after the test."""
    srv_ = AuthoritativeServer().start()
    yield srv_
    pytest_twisted.blockon(Deferred.fromCoroutine(srv_.stop()))


def free_udp_port() -> int:
    """A loopback port free for UDP and TCP right now."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port
    raise RuntimeError("no free port")
