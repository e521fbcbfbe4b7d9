"""Where a mesh gateway sends a connection, decided from its SNI alone (sans-IO).

Consul's mesh gateways never decrypt; they read the service SNI
(``<svc>.<ns>.<dc>.internal.<td>``, see :mod:`gwcore.policy.sni`) and:

1. a name in the gateway's own datacenter goes to that service's Connect endpoints
   (the terminating gateways that link it, its sidecars), found in the site's route
   table, which a mesh site builds from those endpoints;
2. a name in another datacenter goes to that datacenter's mesh gateways;
3. with WAN federation on, Consul servers' names (``server.<dc>.consul``,
   ``<node>.server.<dc>.consul``): see :mod:`gwcore.policy.wanfed`;
4. anything else — another trust domain, not a service SNI, an unknown service, a
   datacenter without known mesh gateways — has no route, with a reason.

A subset name (``<subset>.<svc>.<ns>.<own dc>.internal.<td>``) goes to that subset's
endpoints (the service-resolver's ``Filter``/``OnlyPassing``, see
:mod:`gwcore.policy.subsets`); a subset the resolver does not define has no route,
as Consul's mesh gateway has no cluster for it. A name of another datacenter is
forwarded whatever its subset label: that datacenter resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from gwcore.policy.model import Destination, Endpoint, ServiceName
from gwcore.policy.routes import RouteTable
from gwcore.policy.sni import parse_service_sni, service_sni
from gwcore.policy.wanfed import CONSUL_SERVICE, parse_server_sni, server_target

MESH_GATEWAY_SERVICE = ServiceName("mesh-gateway")
"""The name under which another datacenter's mesh gateways are dialled (and counted)."""

#: Every reason :func:`route_by_sni` gives for no route (a metric label).
NO_ROUTE_REASONS = frozenset(
    {
        "not_a_service_sni",
        "unknown_service",
        "unknown_subset",
        "unknown_server",
        "unknown_datacenter",
    }
)


@dataclass(frozen=True, slots=True)
class MeshRoute:
    """Where to forward: ``target`` is dialled (its endpoints), bytes untouched."""

    sni: str
    service: ServiceName
    datacenter: str  # the datacenter the client addressed
    remote: bool  # True: through that datacenter's mesh gateways
    target: Destination


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: str  # one of NO_ROUTE_REASONS
    detail: str


def route_by_sni(
    sni: str,
    datacenter: str,
    trust_domain: str,
    routes: RouteTable,
    mesh_gateways: Mapping[str, tuple[Endpoint, ...]],
    wan_federation: bool = False,
) -> MeshRoute | NoRoute:
    """Route a normalised SNI for a mesh gateway of ``datacenter`` (module docstring);
    with ``wan_federation`` Consul servers' names too (:mod:`gwcore.policy.wanfed`)."""
    parsed = parse_service_sni(sni, trust_domain)
    if parsed is None:
        server = parse_server_sni(sni) if wan_federation else None
        if server is not None:
            servers = routes.lookup(service_sni(CONSUL_SERVICE, datacenter, trust_domain))
            target, remote, reason = server_target(server, datacenter, servers, mesh_gateways)
            if target is None:
                return NoRoute(reason, f"no Consul server for {sni!r}")
            return MeshRoute(sni, CONSUL_SERVICE, server.datacenter, remote, target)
        return NoRoute("not_a_service_sni", f"{sni!r} is not a service name in {trust_domain}")
    if parsed.datacenter == datacenter:
        local = routes.lookup(service_sni(parsed.service, datacenter, trust_domain))
        if parsed.service == CONSUL_SERVICE:
            local = None  # the servers' RPC port is reached by their own names only
        if local is None:
            return NoRoute(
                "unknown_service", f"no Connect endpoints for {parsed.service} in {datacenter}"
            )
        if parsed.subset is not None:
            subsets = dict(local.subsets)
            if parsed.subset not in subsets:
                return NoRoute(
                    "unknown_subset", f"no subset {parsed.subset!r} of {parsed.service} defined"
                )
            local = replace(local, endpoints=subsets[parsed.subset], subsets=())
        return MeshRoute(sni, parsed.service, datacenter, False, local)
    gateways = mesh_gateways.get(parsed.datacenter)
    if not gateways:
        return NoRoute("unknown_datacenter", f"no mesh gateways known for {parsed.datacenter}")
    target = Destination(MESH_GATEWAY_SERVICE, parsed.datacenter, gateways)
    return MeshRoute(sni, parsed.service, parsed.datacenter, True, target)
