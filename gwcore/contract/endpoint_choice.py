"""The ``tgw_choose_endpoint`` seam: addons reorder or narrow the endpoints a connection
tries, among those the load balancer found usable (gwcore.contract.events.EndpointChoice)."""

from __future__ import annotations

from typing import Any

from gwcore.contract.events import ConnectionInfo, EndpointChoice
from gwcore.policy.model import Destination, Endpoint


def choose_endpoints(
    site: Any, info: ConnectionInfo, destination: Destination, candidates: list[Endpoint]
) -> list[Endpoint]:
    """Ask the site's addons (only called when one implements the hook)."""
    if not candidates:
        return candidates  # nothing to choose from: the site answers upstream_unavailable
    event = EndpointChoice(conn=info, destination=destination, candidates=tuple(candidates))
    site.dispatch("tgw_choose_endpoint", event)
    return list(event.chosen) if event.chosen is not None else candidates
