"""Asynchronous DNS resolution on Twisted Names, and names kept fresh at their TTL.

Two layers, both reusable by any plugin:

- :class:`DNSResolver` answers one question at a time, without blocking the reactor:
  :meth:`~DNSResolver.resolve_addresses` (A and/or AAAA, following CNAME chains) and
  :meth:`~DNSResolver.resolve_service` (SRV, then each target's addresses). Answers
  carry the TTL to cache them for (the smallest TTL of every record used, CNAMEs
  included). Queries go over UDP with an EDNS0 OPT record advertising a 4,096-byte
  payload (RFC 6891; Consul's DNS otherwise cuts SRV answers to ``udp_answer_limit``
  without setting TC) to the configured nameservers (or those of
  ``/etc/resolv.conf``, re-read when it changes), in order: a timeout, SERVFAIL or
  REFUSED moves to the next, as glibc and c-ares do. A truncated UDP answer is asked
  again over TCP (Twisted Names' ``client.Resolver`` does this); FORMERR to the OPT
  record is asked again without it. Host names with fewer than ``ndots`` dots go
  through the search list (:func:`gwcore.policy.resolv.search_names`). Failures are
  :class:`DNSLookupError` with a short ``reason`` (``nxdomain``, ``servfail``,
  ``refused``, ``timeout``, ``cname_loop``, ``error``); NXDOMAIN carries the SOA's
  negative TTL.
- :meth:`~DNSResolver.resolve_addresses` answers ``localhost`` and ``*.localhost``
  with the loopback addresses without any lookup (RFC 6761), and, when a hosts file
  is given, names it lists from it before DNS (re-read when it changes). The
  answer's ``source`` says which answered.
- :class:`DNSWatch` keeps one lookup fresh: it asks again when the answer's TTL
  (clamped to a floor and a ceiling) runs out, serves the last good answer for up to
  ``max_stale`` while lookups fail, holds it for ``hold_nx`` on a negative answer,
  and calls back on every outcome. The rules live in
  :class:`gwcore.policy.dns_records.ServeStale`.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    ensureDeferred,
    succeed,
)
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure

from gwcore.net.dns_transport import FileReader, ServerClient
from gwcore.policy.dns_records import (
    Family,
    RefreshPolicy,
    ResolvedTarget,
    ServeStale,
    SrvRecord,
    Status,
    Step,
    is_ip_literal,
)
from gwcore.policy.resolv import (
    DEFAULT_EDNS_PAYLOAD,
    SYSTEM_RESOLV_CONF,
    HostsFile,
    ResolvConf,
    localhost_addresses,
    parse_hosts,
    parse_resolv_conf,
    search_names,
    split_families,
)

DEFAULT_TIMEOUT = 5.0
DEFAULT_PORT = 53
MAX_CNAME_DEPTH = 8
# A hosts-file answer has no TTL: ask again at the policy's floor, which re-reads the
# file only when it changed (a stat per lookup).
HOSTS_TTL = 0.0


class DNSLookupError(Exception):
    """A lookup that produced no answer; ``reason`` is a short, bounded label for metrics."""

    def __init__(
        self, reason: str, name: str, detail: str = "", *, negative_ttl: float = 0.0
    ) -> None:
        self.reason = reason
        self.name = name
        self.detail = detail
        # NXDOMAIN: how long the authority says "no such name" holds (RFC 2308).
        self.negative_ttl = negative_ttl
        super().__init__(f"{name}: {reason}" + (f" ({detail})" if detail else ""))


LOOKUP_REASONS: tuple[str, ...] = (
    "nxdomain",
    "servfail",
    "refused",
    "timeout",
    "cname_loop",
    "error",
)


def lookup_reason(reason: BaseException | Failure) -> str:
    """The ``reason`` label for any exception a lookup may fail with."""
    exc = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exc, DNSLookupError):
        return exc.reason
    if isinstance(exc, dns_error.DNSNameError):
        return "nxdomain"
    if isinstance(exc, dns_error.DNSServerError):
        return "servfail"
    if isinstance(exc, dns_error.DNSQueryRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | dns_error.DNSQueryTimeoutError | CancelledError):
        return "timeout"
    return "error"


@dataclass(frozen=True, slots=True)
class AddressAnswer:
    """The addresses of ``name`` (after CNAMEs: ``canonical``), cacheable for ``ttl`` seconds.

    An empty ``addresses`` is a successful "no such records" answer (NODATA); its
    ``ttl`` is the zone's negative-caching TTL when the server sent one, else 0.
    ``source`` says what answered: ``dns``, ``hosts`` (the hosts file), ``localhost``
    (RFC 6761, no lookup) or ``literal`` (an IP address).
    """

    name: str
    addresses: tuple[str, ...]
    ttl: float
    canonical: str = ""
    source: str = "dns"

    @property
    def empty(self) -> bool:
        return not self.addresses


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    """An SRV answer with each target's addresses, cacheable for ``ttl`` seconds.

    ``failed_targets`` names targets whose address lookup failed (they have no
    addresses in ``targets``); the answer is still good while another target resolved.
    """

    name: str
    targets: tuple[ResolvedTarget, ...]
    ttl: float
    failed_targets: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(t.addresses and not t.record.unavailable for t in self.targets)


def _text(name: dns.Name | bytes | str) -> str:
    raw = name.name if isinstance(name, dns.Name) else name
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    return text.rstrip(".").lower()


def _address(record: dns.RRHeader) -> str | None:
    if record.type == dns.A:
        return record.payload.dottedQuad()
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, record.payload.address)
    return None


class DNSResolver:
    """Resolves names with Twisted Names, never blocking the reactor.

    ``nameservers`` are ``(ip, port)`` pairs tried in order; ``None`` means the
    system's (``resolv_conf``, re-read when it changes). ``timeout`` bounds each
    lookup as a whole (the query is sent twice per nameserver within it, in case a
    UDP datagram was lost); CNAME chains are followed for up to ``max_cname_depth``
    names. ``edns_payload`` is the UDP payload size advertised in an OPT record (0:
    send none). ``search`` and ``ndots`` default to ``resolv_conf``'s. ``hosts_file``
    (``None``: none) is consulted before DNS by :meth:`resolve_addresses`. Call
    :meth:`close` when done (it drops open TCP connections).
    """

    def __init__(
        self,
        reactor: Any,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_cname_depth: int = MAX_CNAME_DEPTH,
        resolv_conf: str = SYSTEM_RESOLV_CONF,
        edns_payload: int = DEFAULT_EDNS_PAYLOAD,
        search: Sequence[str] | None = None,
        ndots: int | None = None,
        hosts_file: str | None = None,
    ) -> None:
        self._reactor = reactor
        self.timeout = timeout
        self.max_cname_depth = max_cname_depth
        self.edns_payload = edns_payload
        self._nameservers = tuple(nameservers) if nameservers else None
        self._search = tuple(search) if search is not None else None
        self._ndots = ndots
        self._resolv = FileReader(resolv_conf, parse_resolv_conf, ResolvConf())
        self._hosts = FileReader(hosts_file, parse_hosts, HostsFile()) if hosts_file else None
        self._clients: dict[tuple[tuple[str, int], int], ServerClient] = {}

    def close(self) -> None:
        """Drop the TCP connections that are open."""
        for resolver in self._clients.values():
            for connection in list(resolver.connections):
                connection.transport.loseConnection()

    def nameservers(self) -> tuple[tuple[str, int], ...]:
        """The nameservers in use now, in the order they are tried."""
        return self._nameservers or self._resolv.current().nameservers

    def search_list(self) -> tuple[tuple[str, ...], int]:
        """(search domains, ndots) in use now."""
        if self._search is not None and self._ndots is not None:
            return self._search, self._ndots
        conf: ResolvConf = self._resolv.current()
        search = self._search if self._search is not None else conf.search
        ndots = self._ndots if self._ndots is not None else conf.ndots
        return search, ndots

    def resolve_addresses(
        self, name: str, family: Family = Family.PREFER_IPV4
    ) -> Deferred[AddressAnswer]:
        """The A/AAAA addresses of ``name`` chosen by ``family``: from the loopback for
        localhost names, the hosts file, else DNS through the search list; fails with
        :class:`DNSLookupError`."""
        if is_ip_literal(name):
            return succeed(AddressAnswer(name, (name,), math.inf, name, "literal"))
        local = localhost_addresses(name)
        if local is not None:
            addresses = family.select(*split_families(local))
            return succeed(
                AddressAnswer(_text(name), addresses, math.inf, _text(name), "localhost")
            )
        if self._hosts is not None:
            listed = family.select(*split_families(self._hosts.current().addresses(name)))
            if listed:
                return succeed(AddressAnswer(_text(name), listed, HOSTS_TTL, _text(name), "hosts"))
        return self._bounded(self._searched(name, lambda n: self._addresses(n, family, {})), name)

    def resolve_service(
        self, name: str, family: Family = Family.PREFER_IPV4
    ) -> Deferred[ServiceAnswer]:
        """The SRV records of ``name`` and their targets' addresses (additional-section
        records are used when present; the rest are queried, concurrently)."""
        return self._bounded(self._searched(name, lambda n: self._service(n, family)), name)

    async def _searched(self, name: str, attempt: Callable[[str], Any]) -> Any:
        """``attempt`` for each name of the search list until one has records; NXDOMAIN
        and empty answers move on, anything else ends the search."""
        search, ndots = self.search_list()
        empty: Any = None
        negatives: list[DNSLookupError] = []
        for candidate in search_names(name, search, ndots):
            try:
                answer = await attempt(candidate)
            except DNSLookupError as e:
                if e.reason != "nxdomain":
                    raise
                negatives.append(e)
                continue
            if not answer.empty:
                return answer
            empty = empty or answer
        if empty is not None:
            return empty
        # Reported under the name asked for, cacheable for the shortest negative TTL seen.
        raise DNSLookupError(
            "nxdomain",
            name,
            negatives[0].detail,
            negative_ttl=min(e.negative_ttl for e in negatives),
        )

    def _bounded(self, coroutine: Any, name: str) -> Deferred[Any]:
        d = ensureDeferred(coroutine)
        d.addTimeout(self.timeout, self._reactor)

        def translate(failure: Failure) -> Failure:
            if failure.check(DNSLookupError):
                return failure
            return Failure(DNSLookupError(lookup_reason(failure), name, _detail(failure.value)))

        return d.addErrback(translate)

    def _client(self, server: tuple[str, int], payload: int) -> ServerClient:
        key = (server, payload)
        if key not in self._clients:
            self._clients[key] = ServerClient(server, payload, self._reactor)
        return self._clients[key]

    async def _query(self, name: str, qtype: int) -> tuple[list[Any], list[Any], list[Any]]:
        """Ask each nameserver in order until one answers (NOERROR or NXDOMAIN)."""
        servers = self.nameservers()
        # Per nameserver, a first try and one retransmission; the whole lookup is
        # bounded by ``timeout`` separately, so this only spreads the attempts.
        per_try = max(self.timeout / (2 * len(servers)), 0.05)
        timeouts = (per_try / 2, per_try * 1.5)
        error: DNSLookupError | None = None
        for server in servers:
            try:
                return await self._ask(server, name, qtype, timeouts)
            except DNSLookupError as e:
                if e.reason == "nxdomain":
                    raise  # an authority answered: no other server is asked
                error = e  # timeout, SERVFAIL, REFUSED, a network error: the next one
        assert error is not None
        raise error

    async def _ask(
        self, server: tuple[str, int], name: str, qtype: int, timeouts: tuple[float, ...]
    ) -> tuple[list[Any], list[Any], list[Any]]:
        query = dns.Query(name, qtype, dns.IN)
        try:
            try:
                return await self._client(server, self.edns_payload).query(query, timeouts)
            except dns_error.DNSFormatError:
                if not self.edns_payload:
                    raise
                # RFC 6891 6.2.2: a server that does not know EDNS answers FORMERR.
                return await self._client(server, 0).query(query, timeouts)
        except DNSLookupError:
            raise
        except dns_error.DNSNameError as e:
            message = e.args[0] if e.args and isinstance(e.args[0], dns.Message) else None
            ttl = _negative_ttl(message.authority) if message is not None else 0.0
            raise DNSLookupError("nxdomain", name, "DNSNameError", negative_ttl=ttl) from None
        except (CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise DNSLookupError(lookup_reason(e), name, _detail(e)) from None

    async def _follow(
        self, name: str, qtype: int, additional: dict[tuple[str, int], list[Any]]
    ) -> tuple[list[Any], float, str, list[Any]]:
        """Records of ``qtype`` for ``name`` after CNAMEs.

        Returns (records, ttl, canonical name, the last answer's additional section).
        The ttl is the smallest of every record used; for NODATA it is the negative TTL.
        Records of ``additional`` (from an earlier answer) are used instead of asking.
        """
        ttl = math.inf
        current = _text(name)
        seen = {current}
        for _ in range(self.max_cname_depth + 1):
            cached = additional.get((current, qtype))
            if cached:
                return cached, min(ttl, *(r.ttl for r in cached)), current, []
            answers, authority, extra = await self._query(current, qtype)
            moved = False
            while True:
                records = [r for r in answers if r.type == qtype and _text(r.name) == current]
                if records:
                    return records, min(ttl, *(r.ttl for r in records)), current, extra
                cname = next(
                    (r for r in answers if r.type == dns.CNAME and _text(r.name) == current), None
                )
                if cname is None:
                    break
                ttl = min(ttl, cname.ttl)
                current = _text(cname.payload.name)
                if current in seen or len(seen) > self.max_cname_depth:
                    raise DNSLookupError("cname_loop", name, f"at {current}")
                seen.add(current)
                moved = True
            if not moved:
                return [], min(ttl, _negative_ttl(authority)), current, extra
            # The chain leaves this answer (the target is in another zone): ask for it.
        raise DNSLookupError("cname_loop", name, f"more than {self.max_cname_depth} CNAMEs")

    async def _addresses(
        self, name: str, family: Family, additional: dict[tuple[str, int], list[Any]]
    ) -> AddressAnswer:
        if is_ip_literal(name):
            return AddressAnswer(name, (name,), math.inf, name, "literal")
        wanted = ((dns.A, family.wants_ipv4), (dns.AAAA, family.wants_ipv6))
        qtypes = [qtype for qtype, wants in wanted if wants]
        pending = [ensureDeferred(self._follow(name, qtype, additional)) for qtype in qtypes]
        results = await DeferredList(pending, consumeErrors=True)
        found: dict[int, list[str]] = {dns.A: [], dns.AAAA: []}
        ttls: list[float] = []  # of the answers with records
        negative: list[float] = []  # of the NODATA answers
        canonical = _text(name)
        errors: list[Failure] = []
        for qtype, (ok, result) in zip(qtypes, results, strict=True):
            if not ok:
                errors.append(result)
                continue
            records, ttl, canonical, _ = result
            found[qtype] = [a for a in (_address(r) for r in records) if a is not None]
            (ttls if found[qtype] else negative).append(ttl)
        if errors and (len(errors) == len(qtypes) or not any(found.values())):
            # Nothing usable: report the failure (a half answer would look like NODATA),
            # one that says no authority answered before an NXDOMAIN (serve stale).
            errors.sort(key=lambda f: lookup_reason(f) == "nxdomain")
            errors[0].raiseException()
        addresses = family.select(found[dns.A], found[dns.AAAA])
        ttl = min(ttls or negative or [0.0])
        return AddressAnswer(_text(name), addresses, 0.0 if math.isinf(ttl) else ttl, canonical)

    async def _service(self, name: str, family: Family) -> ServiceAnswer:
        records, ttl, _, additional_records = await self._follow(name, dns.SRV, {})
        answer_name = _text(name)
        srv = sorted(
            SrvRecord(
                priority=r.payload.priority,
                weight=r.payload.weight,
                port=r.payload.port,
                target=_text(r.payload.target) or ".",
            )
            for r in records
        )
        if not srv:
            return ServiceAnswer(answer_name, (), 0.0 if math.isinf(ttl) else ttl)
        # The additional section of the SRV answer often carries the targets' addresses
        # (Consul and dnsmasq send them); use them instead of asking again.
        additional: dict[tuple[str, int], list[Any]] = {}
        for record in additional_records:
            if record.type in (dns.A, dns.AAAA):
                additional.setdefault((_text(record.name), record.type), []).append(record)
        targets = sorted({r.target for r in srv if not r.unavailable})
        pending = [ensureDeferred(self._addresses(t, family, additional)) for t in targets]
        results = await DeferredList(pending, consumeErrors=True)
        by_target: dict[str, tuple[str, ...]] = {}
        failed: list[str] = []
        errors: list[Failure] = []
        for target, (ok, result) in zip(targets, results, strict=True):
            if ok:
                by_target[target] = result.addresses
                if result.addresses:
                    ttl = min(ttl, result.ttl)
            else:
                failed.append(target)
                errors.append(result)
        if targets and len(errors) == len(targets):
            errors[0].raiseException()
        resolved = tuple(ResolvedTarget(r, by_target.get(r.target, ())) for r in srv)
        return ServiceAnswer(answer_name, resolved, 0.0 if math.isinf(ttl) else ttl, tuple(failed))


def _negative_ttl(authority: list[Any]) -> float:
    """RFC 2308: a NODATA answer is cached for min(SOA TTL, SOA MINIMUM); 0 without a SOA."""
    for record in authority:
        if record.type == dns.SOA:
            return float(min(record.ttl, record.payload.minimum))
    return 0.0


def _detail(exc: BaseException) -> str:
    if isinstance(exc, dns_error.DomainError | TimeoutError | CancelledError):
        return type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


# --- keeping one name fresh ---------------------------------------------------------


class Answer(Protocol):
    """What a watched lookup fires with: a TTL and whether it holds usable records."""

    @property
    def ttl(self) -> float: ...

    @property
    def empty(self) -> bool: ...


A = TypeVar("A", bound=Answer)


@dataclass(frozen=True, slots=True)
class WatchUpdate(Generic[A]):
    """One outcome of a :class:`DNSWatch`: the answer now in force and how it came about.

    ``answer`` is ``None`` when nothing is in force (never resolved, or expired).
    ``result`` is ``"success"``, ``"empty"`` or a :data:`LOOKUP_REASONS` label;
    ``step`` is the serve-stale decision (status, whether the answer changed, the
    transition to log, when the next lookup is due).
    """

    name: str
    answer: A | None
    result: str
    step: Step[A]
    error: str | None = None


class DNSWatch(Generic[A]):
    """Keeps one lookup fresh: asks again at the clamped TTL, serves stale on failure.

    ``lookup`` starts one resolution (for instance
    ``lambda: resolver.resolve_service(name, family)``); it must fail with
    :class:`DNSLookupError` (or any exception, counted as ``error``) and be bounded in
    time. ``on_update`` is called on the reactor after every attempt. Only one
    attempt runs at a time; :meth:`refresh_now` asks at once (a no-op while one runs).
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        lookup: Callable[[], Deferred[A]],
        policy: RefreshPolicy,
        on_update: Callable[[WatchUpdate[A]], None],
    ) -> None:
        self.name = name
        self._reactor = reactor
        self._lookup = lookup
        self._on_update = on_update
        self.state: ServeStale[A] = ServeStale(policy)
        self._call: Any = None
        self._running: Deferred[A] | None = None
        self._first: Deferred[None] | None = Deferred()
        self._stopped = False

    @property
    def answer(self) -> A | None:
        """The answer in force (``None``: nothing is)."""
        return self.state.value

    @property
    def status(self) -> Status:
        return self.state.status

    def start(self) -> Deferred[None]:
        """Run the first lookup now; the Deferred fires after it, whatever its outcome."""
        first = self._first
        assert first is not None, "start() called twice"
        self.refresh_now()
        return first

    def stop(self) -> None:
        """Cancel the pending refresh and any lookup in flight; no further callbacks."""
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._running is not None:
            self._running.cancel()

    def refresh_now(self) -> None:
        if self._stopped or self._running is not None:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        d = self._lookup()
        self._running = d
        d.addCallbacks(self._answered, self._failed)
        d.addErrback(self._report_bug)

    def _answered(self, answer: A) -> None:
        self._running = None
        if self._stopped:
            return
        now = self._reactor.seconds()
        step = self.state.answered(now, answer, answer.ttl, empty=answer.empty)
        result = "empty" if answer.empty else "success"
        self._finish(WatchUpdate(self.name, step.value, result, step, self.state.last_error))

    def _failed(self, failure: Failure) -> None:
        self._running = None
        if self._stopped:
            return
        reason = lookup_reason(failure)
        detail = str(failure.value)
        now = self._reactor.seconds()
        if reason == "nxdomain":
            # An authoritative "no such name" is a negative answer, not an outage (RFC 8767).
            ttl = getattr(failure.value, "negative_ttl", 0.0)
            step = self.state.negative(now, None, ttl)
            self._finish(WatchUpdate(self.name, step.value, reason, step, detail))
            return
        step = self.state.failed(now, detail)
        self._finish(WatchUpdate(self.name, step.value, reason, step, detail))

    def _finish(self, update: WatchUpdate[A]) -> None:
        self._call = self._reactor.callLater(update.step.refresh_in, self.refresh_now)
        try:
            self._on_update(update)
        finally:
            first, self._first = self._first, None
            if first is not None:
                first.callback(None)

    def _report_bug(self, failure: Failure) -> None:
        # on_update raised: keep refreshing (the timer is set) and surface it to the log.
        from twisted.logger import Logger

        Logger(namespace="tgw.dns").failure("DNS watch callback failed", failure)
