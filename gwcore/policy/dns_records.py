"""DNS answers turned into endpoints, and the refresh / serve-stale rules. Sans-IO.

Values in (records, TTLs, the time now), decisions out (endpoints, when to ask
again, what is in force); no sockets, no reactor. :mod:`gwcore.net.resolver` drives
these rules with real queries.

Rules of :class:`ServeStale`, the per-name state machine:

1. A non-empty answer is *fresh*: it replaces what was in force, is good until
   ``now + clamp(ttl)``, and the name is asked again at that time. ``clamp`` bounds
   the record's TTL by the policy's floor (``min_ttl``) and ceiling (``max_ttl``).
2. A failure — no authority answered: timeout, SERVFAIL, REFUSED, a network error
   (RFC 8767) — while a non-empty answer is in force and ``now`` is before its
   *stale deadline* (``good_until + max_stale``), keeps that answer: the name is
   *stale*. Each such attempt is counted. Retries back off exponentially from
   ``min_ttl`` up to ``min(max_ttl, 30s)``, and one retry always falls on the stale
   deadline.
3. The same at or after the stale deadline *expires* the name: nothing is in force
   any more (the consumer shows zero endpoints). Expiry is reported once.
4. An authoritative *negative* answer (:meth:`ServeStale.negative`: NXDOMAIN, an
   empty NODATA answer, SRV targets that are all ".") is not an outage: the name
   has no records. While a non-empty answer is in force it is *held* for
   ``hold_nx`` (HAProxy's ``hold nx``) counted from the first negative answer, then
   removed; with nothing in force the negative answer is accepted at once. Either
   way the name is asked again after the negative TTL (RFC 2308: the SOA's), clamped
   (during a hold, no later than its end). A failure during a hold does not extend it.
5. A failure when nothing was ever in force leaves the name *unresolved*; it is
   retried with the same back-off.

SRV to endpoints (:func:`srv_endpoints`): RFC 2782 says to use the lowest priority
that answers, and to spread load by weight within it. Each endpoint carries its
record's ``priority``, which :mod:`gwcore.policy.balancing` orders strictly: priority
30 is tried only when no priority-10 or priority-20 endpoint accepts. The lowest
priority's targets are ``PASSING`` and every higher priority's ``WARNING`` (so a
higher priority also ranks below passing endpoints of another source); SRV weights
become endpoint weights, scaled into Consul's 1..128 range per priority. Endpoints are sorted
deterministically, so an unchanged answer builds an identical destination.
:func:`weighted_order` is RFC 2782's randomised selection for callers that pick a
target per connection.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from gwcore.policy.model import Endpoint, Health

MAX_WEIGHT = 128
MAX_RETRY_INTERVAL = 30.0
DEFAULT_HOLD_NX = 30.0
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

V = TypeVar("V")


class Family(enum.Enum):
    """Which address families become endpoints.

    ``IPV4`` / ``IPV6``: only A / only AAAA records. ``BOTH``: every address, IPv4
    first. ``PREFER_IPV4`` / ``PREFER_IPV6``: the preferred family when the name has
    any address of it, otherwise the other one.
    """

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    BOTH = "both"
    PREFER_IPV4 = "prefer_ipv4"
    PREFER_IPV6 = "prefer_ipv6"

    @property
    def wants_ipv4(self) -> bool:
        return self is not Family.IPV6

    @property
    def wants_ipv6(self) -> bool:
        return self is not Family.IPV4

    def select(self, ipv4: Sequence[str], ipv6: Sequence[str]) -> tuple[str, ...]:
        """The addresses to use from the A and AAAA answers, in endpoint order."""
        if self is Family.IPV4:
            return tuple(ipv4)
        if self is Family.IPV6:
            return tuple(ipv6)
        if self is Family.BOTH:
            return (*ipv4, *ipv6)
        if self is Family.PREFER_IPV4:
            return tuple(ipv4) if ipv4 else tuple(ipv6)
        return tuple(ipv6) if ipv6 else tuple(ipv4)


FAMILIES: tuple[str, ...] = tuple(f.value for f in Family)


def is_ip_literal(value: str) -> bool:
    """True for an IPv4 or IPv6 address written as text (no DNS lookup needed)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def valid_hostname(value: str) -> bool:
    """A syntactically valid DNS name (labels of 1..63 octets, 253 in all; one trailing
    dot allowed). Underscores are accepted: SRV owner names start with them."""
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > MAX_NAME_LENGTH:
        return False
    for label in name.split("."):
        if not label or len(label) > MAX_LABEL_LENGTH:
            return False
        if not all(c.isascii() and (c.isalnum() or c in "-_") for c in label):
            return False
    return True


def clamp_ttl(ttl: float, floor: float, ceiling: float) -> float:
    """A record's TTL bounded to ``[floor, ceiling]``; a TTL of 0 means "the floor"."""
    if math.isnan(ttl):
        return floor
    return min(max(ttl, floor), ceiling)


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How often to ask again and how long to serve stale data (seconds)."""

    min_ttl: float = 1.0
    max_ttl: float = 300.0
    max_stale: float = 3600.0
    hold_nx: float = DEFAULT_HOLD_NX

    def __post_init__(self) -> None:
        if not 0 < self.min_ttl <= self.max_ttl:
            raise ValueError(f"need 0 < min_ttl <= max_ttl, got {self.min_ttl}, {self.max_ttl}")
        if self.max_stale < 0:
            raise ValueError(f"max_stale must not be negative, got {self.max_stale}")
        if self.hold_nx < 0:
            raise ValueError(f"hold_nx must not be negative, got {self.hold_nx}")

    def clamp(self, ttl: float) -> float:
        return clamp_ttl(ttl, self.min_ttl, self.max_ttl)

    def retry_delay(self, failures: int) -> float:
        """Back-off after ``failures`` consecutive failed attempts (1 for the first)."""
        ceiling = max(self.min_ttl, min(self.max_ttl, MAX_RETRY_INTERVAL))
        exponent = min(max(failures, 1) - 1, 32)
        return min(self.min_ttl * 2.0**exponent, ceiling)


class Status(enum.Enum):
    """Where a name stands (see the module's rules)."""

    PENDING = "pending"  # not asked yet
    FRESH = "fresh"  # the last attempt answered; its answer is in force
    STALE = "stale"  # the last attempt failed; an older answer is in force
    HELD = "held"  # answered negatively; an older answer is kept for hold_nx
    NEGATIVE = "negative"  # answered negatively (no records); nothing non-empty in force
    EXPIRED = "expired"  # failing for longer than max_stale; nothing in force
    UNRESOLVED = "unresolved"  # never answered


@dataclass(frozen=True, slots=True)
class Step(Generic[V]):
    """What one attempt's outcome means.

    ``value`` is the answer in force (``None``: nothing, i.e. zero endpoints);
    ``changed`` is true when it is a different answer than before; ``refresh_in`` is
    when to ask again. ``event`` names a transition worth one log line (``"stale"``,
    ``"expired"``, ``"recovered"``, ``"unresolved"``, ``"held"``, ``"removed"``,
    ``"negative"``) or is empty.
    """

    value: V | None
    status: Status
    changed: bool
    refresh_in: float
    event: str = ""


class ServeStale(Generic[V]):
    """The per-name refresh and serve-stale state machine (rules in the module docstring).

    Feed it every outcome, :meth:`answered` or :meth:`failed`, with the time now; do
    what the returned :class:`Step` says.
    """

    def __init__(self, policy: RefreshPolicy) -> None:
        self.policy = policy
        self.value: V | None = None
        self.status = Status.PENDING
        self.last_success: float | None = None
        self.good_until: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self._holding = False  # a non-empty answer is in force
        self.negative_since: float | None = None  # first negative answer of a hold

    @property
    def stale_deadline(self) -> float | None:
        """When a stale answer stops being served; ``None`` when none is held."""
        if not self._holding or self.good_until is None:
            return None
        return self.good_until + self.policy.max_stale

    def answered(self, now: float, value: V, ttl: float, *, empty: bool) -> Step[V]:
        """A successful answer (``empty``: no usable records, a negative answer) with its
        TTL in seconds (for an empty one, the negative TTL)."""
        if empty:
            return self.negative(now, value, ttl)
        previous_status = self.status
        self.negative_since = None
        changed = value != self.value
        self.value = value
        self._holding = not empty
        self.failures = 0
        self.last_error = None
        self.last_success = now
        refresh = self.policy.clamp(ttl)
        self.good_until = now + refresh
        self.status = Status.FRESH
        recovered = previous_status in (
            Status.STALE,
            Status.EXPIRED,
            Status.UNRESOLVED,
            Status.HELD,
            Status.NEGATIVE,
        )
        return Step(value, Status.FRESH, changed, refresh, "recovered" if recovered else "")

    def negative(self, now: float, value: V | None, ttl: float) -> Step[V]:
        """An authoritative answer that the name has no usable records (NXDOMAIN:
        ``value`` ``None``; NODATA: the empty answer), ``ttl`` its negative TTL."""
        refresh = self.policy.clamp(ttl)
        self.failures = 0
        if self._holding:
            if self.negative_since is None:
                self.negative_since = now
            hold_end = self.negative_since + self.policy.hold_nx
            if now < hold_end:
                event = "" if self.status is Status.HELD else "held"
                self.status = Status.HELD
                return Step(self.value, Status.HELD, False, min(refresh, hold_end - now), event)
        self.last_success = now  # an authority answered
        return self._accept_negative(now, value, refresh)

    def _accept_negative(self, now: float, value: V | None, refresh: float) -> Step[V]:
        previous_status, was_holding = self.status, self._holding
        changed = was_holding or value != self.value
        self.value = value
        self._holding = False
        self.negative_since = None
        self.last_error = None
        self.good_until = now + refresh
        self.status = Status.NEGATIVE
        event = "removed" if was_holding else ""
        if not event and previous_status is not Status.NEGATIVE:
            event = "negative"
        return Step(value, Status.NEGATIVE, changed, refresh, event)

    def failed(self, now: float, reason: str) -> Step[V]:
        """A failed attempt; ``reason`` is kept for health reports."""
        return self._not_answered(now, reason)

    def _not_answered(self, now: float, reason: str) -> Step[V]:
        self.failures += 1
        self.last_error = reason
        delay = self.policy.retry_delay(self.failures)
        if self.status is Status.HELD and self.negative_since is not None:
            # The authority already said "no records": a failure does not extend the hold.
            hold_end = self.negative_since + self.policy.hold_nx
            if now < hold_end:
                return Step(self.value, Status.HELD, False, min(delay, hold_end - now))
            step = self._accept_negative(now, None, delay)
            self.last_error = reason
            return step
        deadline = self.stale_deadline
        if deadline is not None and now < deadline:
            event = "" if self.status is Status.STALE else "stale"
            self.status = Status.STALE
            return Step(self.value, Status.STALE, False, min(delay, deadline - now), event)
        if self._holding:
            self._holding = False
            self.value = None
            self.status = Status.EXPIRED
            return Step(None, Status.EXPIRED, True, delay, "expired")
        if self.status is Status.PENDING:
            self.status = Status.UNRESOLVED
            return Step(None, Status.UNRESOLVED, False, delay, "unresolved")
        if self.status in (Status.FRESH, Status.NEGATIVE):
            # A negative answer was in force; a failure now is nothing new to show.
            self.status = Status.UNRESOLVED if self.last_success is None else Status.STALE
        return Step(self.value, self.status, False, delay)


# --- SRV -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class SrvRecord:
    """One SRV record's data (RFC 2782); ``target`` without its trailing dot."""

    priority: int
    weight: int
    port: int
    target: str

    @property
    def unavailable(self) -> bool:
        """RFC 2782: a target of "." means the service is decidedly not available."""
        return self.target in ("", ".")


def weighted_order(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782's selection order: ascending priority, weighted-random within a priority.

    Within one priority, zero-weight records are placed first and then, repeatedly, a
    number is drawn uniformly from ``0..sum(weights)`` (inclusive) and the first record
    whose running weight sum reaches it is taken next; so a record of weight ``w`` in a
    group of total ``W`` comes first with probability ``(w + 1) / (W + 1)`` when it
    is listed first, and about ``w / W`` in general.
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        group = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def scaled_weights(weights: Sequence[int]) -> list[int]:
    """SRV weights (0..65535) as endpoint weights (1..128), keeping their ratios.

    Weights that already fit are kept (0 becomes 1); otherwise each is scaled by
    ``128 / max`` and rounded, never below 1.
    """
    if not weights:
        return []
    top = max(weights)
    if top <= MAX_WEIGHT:
        return [max(1, w) for w in weights]
    return [max(1, min(MAX_WEIGHT, round(w * MAX_WEIGHT / top))) for w in weights]


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """An SRV record and the addresses its target resolved to (maybe none)."""

    record: SrvRecord
    addresses: tuple[str, ...]


def srv_endpoints(targets: Iterable[ResolvedTarget]) -> tuple[Endpoint, ...]:
    """Endpoints for an SRV answer: one per (record, address); rules in the module docstring."""
    usable = [t for t in targets if not t.record.unavailable and t.addresses]
    if not usable:
        return ()
    lowest = min(t.record.priority for t in usable)
    groups: dict[int, list[ResolvedTarget]] = {}
    for target in usable:
        groups.setdefault(target.record.priority, []).append(target)
    endpoints: list[Endpoint] = []
    for priority in sorted(groups):
        group = sorted(groups[priority], key=lambda t: (t.record.target, t.record.port))
        weights = scaled_weights([t.record.weight for t in group])
        health = Health.PASSING if priority == lowest else Health.WARNING
        seen: set[tuple[str, int]] = set()
        for target, weight in zip(group, weights, strict=True):
            record = target.record
            for address in sorted(target.addresses, key=_address_order):
                if (address, record.port) in seen:
                    continue  # two records naming the same host:port are one endpoint
                seen.add((address, record.port))
                endpoints.append(
                    Endpoint(
                        address=address,
                        port=record.port,
                        health=health,
                        weight=weight,
                        instance_id=f"{record.target}:{record.port}",
                        node=record.target,
                        priority=record.priority,
                        meta=_meta(
                            hostname=record.target,
                            srv_priority=str(record.priority),
                            srv_weight=str(record.weight),
                        ),
                    )
                )
    return tuple(endpoints)


def host_endpoints(hostname: str, addresses: Iterable[str], port: int) -> tuple[Endpoint, ...]:
    """Endpoints for a hostname + port: one passing endpoint per distinct address."""
    unique = sorted(set(addresses), key=_address_order)
    return tuple(
        Endpoint(
            address=address,
            port=port,
            instance_id=f"{hostname}:{port}",
            node=hostname,
            meta=_meta(hostname=hostname),
        )
        for address in unique
    )


def _address_order(address: str) -> tuple[int, bytes]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (9, address.encode())
    return (ip.version, ip.packed)


def _meta(**values: str) -> Mapping[str, str]:
    return MappingProxyType(dict(sorted(values.items())))


DEFAULT_DNS_PORT = 53


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"127.0.0.1:8600"``, ``"::1"`` or ``"[::1]:8600"`` → (host, port).

    Raises ``ValueError`` for anything else (the host must be an IP address: a
    nameserver found by name would need a resolver to find it).
    """
    host, port = text, DEFAULT_DNS_PORT
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, raw_port = text.split(":")
        port = _port(text, raw_port)
    if not is_ip_literal(host):
        raise ValueError(f"{text!r}: the nameserver must be an IP address")
    return host, port


def _port(text: str, raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{text!r}: bad port {raw!r}")
    return int(raw)
