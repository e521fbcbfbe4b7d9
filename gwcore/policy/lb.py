"""Consistent-hash and choice-based load balancing (sans-IO), as Envoy does it for Consul.

A ``service-resolver``'s ``LoadBalancer.Policy`` (:mod:`gwcore.policy.resolver_settings`)
picks one of:

- ``ring_hash`` (a ketama ring, as Envoy's): every endpoint owns points of a 64-bit
  hash ring in proportion to its weight — 160 per unit of the lightest weight, more
  when the ring would have fewer than ``MinimumRingSize`` points, fewer when it would
  have more than ``MaximumRingSize`` (never above :data:`RING_CAP`, which bounds the
  work of one rebuild). A key goes to the first point at or after its hash; the next
  distinct endpoints along the ring are the fallbacks.
- ``maglev`` (Eisenbud et al., NSDI 2016; Envoy's table size 65537): a lookup table
  filled from each endpoint's permutation in turn, weighted as Envoy does. The rest of
  the order is the table walked from the key's slot.
- ``least_request`` with ``ChoiceCount``: Envoy's "power of N choices" — draw
  ``ChoiceCount`` endpoints at random and take the one with the fewest active
  connections per unit of weight; the others follow in that order.

Both hashes move mostly the keys of an endpoint that leaves (property-tested: when one
of ten equally weighted endpoints leaves, at least 90% of keys stay where they were).
Not only those: the ring is rebuilt for the endpoints that remain, and with few
endpoints ``MinimumRingSize`` gives each more points, so some other keys move too
(about 11% with five endpoints and the default minimum; Envoy's ring does the same). The
L4 key is the client's SPIFFE ID, or its address when a hash policy says ``SourceIP``;
at an ``http`` destination each request brings its own hash, an ``int`` already
(:mod:`gwcore.policy.request_hash`).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

RING_CAP = 1 << 20
POINTS_PER_UNIT = (
    160  # ketama's points per server  # points; the cost of one rebuild is linear in it
)
MAGLEV_SIZE = 65537  # Envoy's default table size (a prime)


def hash64(data: str) -> int:
    """A stable 64-bit hash (the same in every worker and across restarts)."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Member:
    """One endpoint as the hash structures see it: a stable name and a weight."""

    name: str
    weight: int = 1


class Ring:
    """Envoy's ring hash over ``members``."""

    def __init__(self, members: Sequence[Member], min_size: int, max_size: int) -> None:
        self.members = tuple(members)
        lightest = min((max(m.weight, 1) for m in members), default=1)
        units = [max(m.weight, 1) / lightest for m in members]  # the lightest is 1
        # Points per unit of weight: ketama's 160, more if the ring would be below
        # MinimumRingSize, fewer if above MaximumRingSize. Not depending on how many
        # endpoints there are (above the minimum) is what keeps the other endpoints'
        # points, so their keys, in place when one leaves.
        total = sum(units) or 1.0
        per_unit = max(POINTS_PER_UNIT, math.ceil(min_size / total))
        per_unit = max(1.0, min(per_unit, min(max_size, RING_CAP) / total))
        points: list[tuple[int, int]] = []
        for index, (member, unit) in enumerate(zip(members, units, strict=True)):
            for i in range(max(1, round(unit * per_unit))):
                points.append((hash64(f"{member.name}_{i}"), index))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def __len__(self) -> int:
        return len(self._hashes)

    def order(self, key: str | int) -> list[int]:
        """Member indexes: the key's owner first, then distinct members along the ring.
        An ``int`` key is a hash already (an L7 request's, :mod:`request_hash`)."""
        if not self._hashes:
            return []
        point = key if isinstance(key, int) else hash64(key)
        start = bisect.bisect_left(self._hashes, point) % len(self._hashes)
        seen: dict[int, None] = {}
        n = len(self._owners)
        for step in range(n):
            seen.setdefault(self._owners[(start + step) % n])
            if len(seen) == len(self.members):
                break
        return list(seen)


class Maglev:
    """Maglev's lookup table over ``members`` (weighted as Envoy's)."""

    def __init__(self, members: Sequence[Member], size: int = MAGLEV_SIZE) -> None:
        self.members = tuple(members)
        self.size = size
        self.table: list[int] = []
        if not members:
            return
        offsets = [hash64(f"{m.name}#offset") % size for m in members]
        skips = [hash64(f"{m.name}#skip") % (size - 1) + 1 for m in members]
        weights = [max(m.weight, 1) for m in members]
        top = max(weights)
        nexts = [0] * len(members)
        credit = [0.0] * len(members)
        table = [-1] * size
        filled = 0
        while filled < size:
            for i in range(len(members)):
                credit[i] += weights[i] / top
                if credit[i] < 1.0:
                    continue
                credit[i] -= 1.0
                while True:  # this member's next preferred free slot
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                    nexts[i] += 1
                    if table[slot] < 0:
                        break
                table[slot] = i
                filled += 1
                if filled == size:
                    break
        self.table = table

    def order(self, key: str | int) -> list[int]:
        if not self.table:
            return []
        slot = (key if isinstance(key, int) else hash64(key)) % self.size
        seen: dict[int, None] = {}
        for step in range(self.size):
            seen.setdefault(self.table[(slot + step) % self.size])
            if len(seen) == len(self.members):
                break
        return list(seen)


def power_of_choices(
    count: int,
    load: Callable[[int], float],
    n: int,
    rng: random.Random,
) -> list[int]:
    """Envoy's least-request: draw ``count`` of ``n`` at random, least loaded first, then
    the rest in order of load."""
    drawn = rng.sample(range(n), min(count, n))
    first = min(drawn, key=lambda i: (load(i), drawn.index(i)))
    rest = sorted((i for i in range(n) if i != first), key=lambda i: (load(i), i))
    return [first, *rest]


def hash_key(destination: Any, conn: Any) -> str:
    """A connection's L4 hash key for ``destination``'s policy: the client's address if
    a hash policy says ``SourceIP``, else its SPIFFE ID (its address without one)."""
    if destination.lb_policy not in ("ring_hash", "maglev"):
        return ""
    info = getattr(conn, "info", None)
    address = getattr(info, "client_address", "") or ""
    identity = getattr(conn, "identity", None)
    if destination.load_balancer.hashes_source_ip or identity is None:
        return address
    return str(identity)
