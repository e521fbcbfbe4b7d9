"""Choosing the order in which to try a destination's endpoints for one connection.

Rules:

1. Critical endpoints are never tried.
2. Passing endpoints come before warning ones: a warning instance still serves, but
   only when no passing one accepts the connection.
3. Within each health tier the order is rotated round robin: each call for a service
   starts one place further on, so successive connections spread over the instances.
   The net layer tries the list in order, moving on after a connect failure.

Selection is split in two steps, :func:`health_tiers` and the per-tier ordering, so
other ``lb_policy`` values (weights, least connections) replace only the ordering.
Until then every policy orders round robin.
"""

from __future__ import annotations

from collections.abc import Iterable

from gwcore.policy.model import Destination, Endpoint, Health, ServiceName


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


def _rotated(tier: list[Endpoint], turn: int) -> list[Endpoint]:
    if not tier:
        return tier
    start = turn % len(tier)
    return tier[start:] + tier[:start]


class EndpointPicker:
    """Per-site endpoint ordering; one instance serves every connection of the site.

    State is one counter per (service, datacenter), advanced once per :meth:`candidates`
    call that returns endpoints, so the output depends only on the sequence of calls.
    Not thread-safe; it lives on the reactor thread like the rest of a site.
    """

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: dict[tuple[ServiceName, str], int] = {}

    def candidates(self, destination: Destination) -> list[Endpoint]:
        """Endpoints to try for one new connection, in order; empty if none is usable."""
        passing, warning = health_tiers(destination.endpoints)
        if not passing and not warning:
            return []
        key = (destination.service, destination.datacenter)
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return _rotated(passing, turn) + _rotated(warning, turn)
