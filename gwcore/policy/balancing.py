"""Choosing the order in which to try a destination's endpoints for one connection.

Rules, applied in this order:

1. Critical endpoints are never tried.
2. Endpoints ejected by passive outlier detection are skipped — unless that would
   leave nothing to try, in which case ejections are ignored (an ejection must never
   turn a degraded service into an unreachable one).
3. Health: by default (``health_order = "weighted"``, as Consul) warning instances are
   as eligible as passing ones, with their ``Weights.Warning`` weight. With the site's
   ``health_order = "passing_first"`` passing endpoints come before warning ones: a
   warning instance serves only when no passing one accepts the connection. Inside a
   tier, endpoints of a lower ``priority`` (an SRV record's, RFC 2782) all come before
   any of a higher one.
4. Within each (health, priority) tier the destination's ``lb_policy`` orders the endpoints,
   respecting their weights (Consul's ``Weights.Passing``/``Warning``):

   - ``round_robin`` (default): smooth weighted round robin; over any window the
     first choices are proportional to the weights, with no bursts.
   - ``least_request`` (Consul's name; ``least_connections`` is accepted): fewest
     open connections per unit of weight first, round robin among equals. From a
     service-resolver (``LoadBalancer.LeastRequestConfig.ChoiceCount``) it is Envoy's
     power of N choices (:func:`gwcore.policy.lb.power_of_choices`).
   - ``random``: weighted random order (each endpoint drawn with probability
     proportional to its weight, without replacement).
   - ``ring_hash`` / ``maglev`` (from a service-resolver): consistent hashing of the
     connection's hash key (:mod:`gwcore.policy.lb`).

The net layer tries the returned list in order, moving on after a connect failure,
and reports every outcome back (:meth:`EndpointPicker.failed`, :meth:`succeeded`,
:meth:`opened`, :meth:`closed`) so outlier detection and least-request see it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from gwcore.policy.lb import Maglev, Member, Ring, power_of_choices
from gwcore.policy.model import Destination, Endpoint, Health, ServiceName

POLICIES = ("round_robin", "least_request", "random")  # the site's lb_policy choices
RESOLVER_POLICIES = (*POLICIES, "ring_hash", "maglev")  # a service-resolver's too
HEALTH_ORDERS = ("weighted", "passing_first")
_ORDERS = {
    "round_robin": "_round_robin",
    "least_request": "_least_request",
    "random": "_random",
    "ring_hash": "_hashed",
    "maglev": "_hashed",
}  # policy -> the EndpointPicker method that orders a tier
_HASH_CACHE = 64  # hash structures kept (one per destination tier in use)
ALIASES = {"least_connections": "least_request", "": "round_robin"}

EndpointKey = tuple[ServiceName, str, str, int]  # (service, datacenter, address, port)


def policy_name(value: str) -> str | None:
    """The canonical policy for a configured name, or ``None`` if unknown."""
    value = ALIASES.get(value, value)
    return value if value in POLICIES else None


def health_tiers(endpoints: Iterable[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
    """Split endpoints into (passing, warning), keeping catalog order; critical ones are dropped."""
    passing: list[Endpoint] = []
    warning: list[Endpoint] = []
    for endpoint in endpoints:
        if endpoint.health is Health.PASSING:
            passing.append(endpoint)
        elif endpoint.health is Health.WARNING:
            warning.append(endpoint)
    return passing, warning


def priority_groups(tier: list[Endpoint]) -> list[list[Endpoint]]:
    """``tier`` split by ``priority``, lowest first, keeping catalog order in each group."""
    if all(e.priority == tier[0].priority for e in tier):
        return [tier] if tier else []
    groups: dict[int, list[Endpoint]] = {}
    for endpoint in tier:
        groups.setdefault(endpoint.priority, []).append(endpoint)
    return [groups[p] for p in sorted(groups)]


def endpoint_key(destination: Destination, endpoint: Endpoint) -> EndpointKey:
    return (destination.service, destination.datacenter, endpoint.address, endpoint.port)


@dataclass(slots=True)
class _Outlier:
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0


class OutlierDetector:
    """Passive outlier detection: consecutive connect failures eject an endpoint.

    After ``consecutive`` failures in a row an endpoint is ejected for
    ``base * 2**(n-1)`` seconds (``n`` = how often it was ejected before and since its
    last clean period), at most ``maximum``. A success resets the failure count; a
    full ``maximum`` without ejection forgets earlier ejections.
    """

    def __init__(self, consecutive: int = 5, base: float = 30.0, maximum: float = 300.0) -> None:
        self.consecutive = consecutive
        self.base = base
        self.maximum = maximum
        self._state: dict[EndpointKey, _Outlier] = {}

    def tracking(self) -> bool:
        """Whether any endpoint has failures or ejections on record."""
        return bool(self._state)

    def ejected(self, key: EndpointKey, now: float) -> bool:
        state = self._state.get(key)
        return state is not None and state.ejected_until > now

    def failure(self, key: EndpointKey, now: float, may_eject: bool) -> float | None:
        """Count a failure; return the ejection length if this one ejected the endpoint."""
        state = self._state.setdefault(key, _Outlier())
        if state.ejected_until and now - state.ejected_until > self.maximum:
            state.ejections = 0  # clean for a long while: start over
        state.failures += 1
        if state.failures < self.consecutive or not may_eject or state.ejected_until > now:
            return None
        state.ejections += 1
        length = min(self.base * 2 ** (state.ejections - 1), self.maximum)
        state.ejected_until = now + length
        state.failures = 0
        return length

    def success(self, key: EndpointKey) -> bool:
        """Reset the failure count; whether the endpoint was :meth:`failing` before."""
        state = self._state.get(key)
        was = self.failing(key)
        if state is not None:
            state.failures = 0
        return was

    def failing(self, key: EndpointKey) -> bool:
        """At least ``consecutive`` failures in a row and not ejected (the last endpoint
        of a destination stays in rotation then, but is not healthy)."""
        state = self._state.get(key)
        return state is not None and state.failures >= self.consecutive

    def forget(self, keep: set[EndpointKey]) -> None:
        """Drop state of endpoints no longer in any destination."""
        self._state = {k: v for k, v in self._state.items() if k in keep}


class EndpointPicker:
    """Per-site endpoint ordering and bookkeeping; lives on the reactor thread."""

    def __init__(
        self, outliers: OutlierDetector | None = None, rng: random.Random | None = None
    ) -> None:
        self.outliers = outliers or OutlierDetector()
        self._rng = rng or random.Random()
        self._key: str | int = ""
        self._current: dict[EndpointKey, float] = {}  # smooth weighted round robin state
        self._active: dict[EndpointKey, int] = {}
        self._turns: dict[tuple[ServiceName, str], int] = {}
        self._hashes: dict[tuple[object, ...], Ring | Maglev] = {}

    # --- ordering -----------------------------------------------------------------

    def usable(self, destination: Destination, now: float) -> list[Endpoint]:
        """Non-critical endpoints, without the ejected ones unless none would be left."""
        live = [e for e in destination.endpoints if e.health is not Health.CRITICAL]
        if not self.outliers.tracking():
            return live  # nothing ever failed: nothing to skip (L7 asks once per request)
        kept = [e for e in live if not self.outliers.ejected(endpoint_key(destination, e), now)]
        return kept or live

    def candidates(
        self,
        destination: Destination,
        now: float = 0.0,
        key: str | int = "",
        passing_first: bool = False,
    ) -> list[Endpoint]:
        """Endpoints to try for one new connection, in order; empty if none is usable.

        ``key`` is the connection's hash key (``ring_hash``, ``maglev``), or an L7
        request's hash (an ``int``, :mod:`gwcore.policy.request_hash`);
        ``passing_first`` is the site's ``health_order = "passing_first"``.
        """
        usable = self.usable(destination, now)  # passing and warning, in catalog order
        if not usable:
            return []
        tiers = health_tiers(usable) if passing_first else (usable,)
        policy = destination.lb_policy if destination.lb_policy in RESOLVER_POLICIES else ""
        policy = policy or policy_name(destination.lb_policy) or "round_robin"
        order = getattr(self, _ORDERS[policy])
        self._key = key
        turn_key = (destination.service, destination.datacenter)
        turn = self._turns.get(turn_key, 0)
        self._turns[turn_key] = turn + 1
        ordered: list[Endpoint] = []
        for tier in tiers:
            for group in priority_groups(tier):
                ordered += order(destination, group, turn)
        return ordered

    def usable_in_order(self, destination: Destination, now: float) -> list[Endpoint]:
        """Passing and warning endpoints together, in catalog order."""
        return [
            e for e in self.usable(destination, now) if e.health in (Health.PASSING, Health.WARNING)
        ]

    def _hashed(self, destination: Destination, tier: list[Endpoint], turn: int) -> list[Endpoint]:
        if len(tier) <= 1:
            return tier
        lb = destination.load_balancer
        members = tuple(Member(f"{e.address}:{e.port}", e.weight) for e in tier)
        cache_key = (destination.lb_policy, lb.min_ring, lb.max_ring, members)
        table = self._hashes.get(cache_key)
        if table is None:
            if len(self._hashes) >= _HASH_CACHE:
                self._hashes.pop(next(iter(self._hashes)))
            table = (
                Ring(members, lb.min_ring, lb.max_ring)
                if destination.lb_policy == "ring_hash"
                else Maglev(members)
            )
            self._hashes[cache_key] = table
        if self._key == "":  # nothing to hash on: behave as random, as Envoy does
            return self._random(destination, tier, turn)
        return [tier[i] for i in table.order(self._key)]

    def _round_robin(
        self, destination: Destination, tier: list[Endpoint], turn: int
    ) -> list[Endpoint]:
        if len(tier) <= 1:
            return tier
        keys = [endpoint_key(destination, e) for e in tier]
        current = self._current
        total = 0
        for key, endpoint in zip(keys, tier, strict=True):
            current[key] = current.get(key, 0.0) + endpoint.weight
            total += endpoint.weight
        # Ties go to catalog order (as nginx does): that keeps the schedule periodic,
        # so every window of sum(weights) picks gives each endpoint exactly its weight.
        ranked = sorted(range(len(tier)), key=lambda i: (-current[keys[i]], i))
        current[keys[ranked[0]]] -= total
        return [tier[i] for i in ranked]

    def _least_request(
        self, destination: Destination, tier: list[Endpoint], turn: int
    ) -> list[Endpoint]:
        if len(tier) <= 1:
            return tier
        n = len(tier)

        def load(i: int) -> tuple[float, int]:
            active = self._active.get(endpoint_key(destination, tier[i]), 0)
            return (active / max(tier[i].weight, 1), (i - turn) % n)

        if destination.load_balancer.policy == "least_request":  # a resolver's ChoiceCount
            choices = destination.load_balancer.choice_count
            return [tier[i] for i in power_of_choices(choices, lambda i: load(i)[0], n, self._rng)]
        return [tier[i] for i in sorted(range(n), key=load)]

    def _random(self, destination: Destination, tier: list[Endpoint], turn: int) -> list[Endpoint]:
        if len(tier) <= 1:
            return tier
        # Efraimidis-Spirakis: sort by u**(1/w) descending = weighted sampling without replacement.
        rng = self._rng
        return sorted(tier, key=lambda e: rng.random() ** (1.0 / max(e.weight, 1)), reverse=True)

    # --- feedback from the net layer ----------------------------------------------

    def failed(self, destination: Destination, endpoint: Endpoint, now: float) -> float | None:
        """A connect attempt failed; returns the ejection length if it ejected the endpoint."""
        key = endpoint_key(destination, endpoint)
        others = [
            e
            for e in self.usable(destination, now)
            if e != endpoint and not self.outliers.ejected(endpoint_key(destination, e), now)
        ]
        return self.outliers.failure(key, now, may_eject=bool(others))

    def succeeded(self, destination: Destination, endpoint: Endpoint) -> bool:
        """Whether the endpoint was failing before this success (its health changed)."""
        return self.outliers.success(endpoint_key(destination, endpoint))

    def healthy(self, destination: Destination, now: float) -> list[Endpoint]:
        """:meth:`usable` endpoints that are not failing every connect."""
        out = self.outliers
        return [
            e
            for e in self.usable(destination, now)
            if not out.failing(key := endpoint_key(destination, e)) and not out.ejected(key, now)
        ]

    def opened(self, destination: Destination, endpoint: Endpoint) -> None:
        key = endpoint_key(destination, endpoint)
        self._active[key] = self._active.get(key, 0) + 1

    def closed(self, destination: Destination, endpoint: Endpoint) -> None:
        key = endpoint_key(destination, endpoint)
        left = self._active.get(key, 0) - 1
        if left > 0:
            self._active[key] = left
        else:
            self._active.pop(key, None)

    def active(self, destination: Destination, endpoint: Endpoint) -> int:
        return self._active.get(endpoint_key(destination, endpoint), 0)

    def prune(self, destinations: Iterable[Destination]) -> None:
        """Forget state of endpoints that left the catalog (bounded memory)."""
        keep = {endpoint_key(d, e) for d in destinations for e in d.endpoints}
        self.outliers.forget(keep)
        self._current = {k: v for k, v in self._current.items() if k in keep}
