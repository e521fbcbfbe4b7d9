"""The route table: which destination a TLS server name reaches.

Rules:

1. Catalog snapshots are merged in stack order (:func:`merge_snapshots`): the first
   snapshot that names a service defines it, later ones cannot override or extend it;
   intentions from every snapshot that speaks about intentions are concatenated.
2. Each destination is reachable under exactly one name, Consul's service SNI built
   with the *gateway's* datacenter (a terminating gateway's filter chains use its own
   DC, whatever DC the client addressed through mesh gateways) — plus, for a service
   with ``service-resolver`` subsets, one name per subset (``<subset>.<svc>...``, Consul's
   subset SNI) reaching only the subset's endpoints. A subset the resolver does not
   define has no name, so it is refused like any unknown SNI.
3. A :class:`RouteTable` never changes. A new catalog builds a new table and the site
   swaps the reference; a connection keeps the table it started with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from gwcore.policy.destinations import destination_sni
from gwcore.policy.http_facts import DEFAULT_MESH_HTTP, MeshHttp, is_l7
from gwcore.policy.model import CatalogSnapshot, Destination, Endpoint, Intention, ServiceName
from gwcore.policy.sni import service_sni


def merge_snapshots(
    snapshots: Sequence[CatalogSnapshot],
) -> tuple[tuple[Destination, ...], tuple[Intention, ...], str]:
    """Merge catalog snapshots given in stack order into (destinations, intentions, version).

    A service (by :class:`ServiceName`) is taken from the first snapshot that has it,
    including the first occurrence inside one snapshot. Intentions are concatenated in
    stack order from every snapshot whose ``intentions`` is not ``None``. ``version`` is a
    digest of each snapshot's source and version in order, so it changes when any input
    does or when the stack is reordered.
    """
    destinations: list[Destination] = []
    seen: set[ServiceName] = set()
    intentions: list[Intention] = []
    digest = hashlib.sha256()
    for snapshot in snapshots:
        digest.update(f"{len(snapshot.source)}:{snapshot.source}".encode())
        digest.update(f"{len(snapshot.version)}:{snapshot.version}".encode())
        for destination in snapshot.destinations:
            if destination.service not in seen:
                seen.add(destination.service)
                destinations.append(destination)
        if snapshot.intentions is not None:
            intentions.extend(snapshot.intentions)
    return tuple(destinations), tuple(intentions), digest.hexdigest()[:16]


def merge_mesh_gateways(snapshots: Sequence[CatalogSnapshot]) -> Mapping[str, tuple[Endpoint, ...]]:
    """Mesh gateways per datacenter from snapshots in stack order.

    Same rule as services: the first snapshot naming a datacenter defines its gateways.
    """
    gateways: dict[str, tuple[Endpoint, ...]] = {}
    for snapshot in snapshots:
        for entry in snapshot.mesh_gateways:
            gateways.setdefault(entry.datacenter, entry.endpoints)
    return MappingProxyType(gateways)


def merge_mesh_http(snapshots: Sequence[CatalogSnapshot]) -> MeshHttp:
    """The ``mesh`` entry's HTTP options of the first snapshot, in stack order, that has
    one (a source without a ``mesh`` entry says nothing); Consul's defaults otherwise."""
    return next((s.mesh_http for s in snapshots if s.mesh_http is not None), DEFAULT_MESH_HTTP)


def serves_l7(destination: Destination) -> bool:
    """True when a route to ``destination`` is served request by request (L7).

    A linked service whose protocol is HTTP-like (``http``, ``http2``, ``grpc``) is; a
    ``service-defaults`` ``Destination`` (the ``destination.`` routes) is always served
    at L4, whatever its protocol: Consul's documentation says L7 intentions are not
    supported for destinations (reference §3; :mod:`gwcore.policy.destinations`), so
    tgw keeps them byte-exact and an intention with ``Permissions`` to one denies, as it
    does for a ``tcp`` service. (Consul's xDS code is more lenient than its documentation:
    ``makeFilterChainTerminatingGateway`` in ``agent/xds/listeners.go`` builds a
    destination's filter chain from its protocol, HTTP filter and L7 RBAC included; tgw
    keeps the documented, stricter rule and ``tgw check-config`` warns.)
    """
    return is_l7(destination.protocol) and not destination.egress


class RouteTable:
    """An immutable map from normalised SNI to :class:`Destination`.

    Build one with :meth:`build` (or :meth:`empty`). Iteration yields ``(sni,
    destination)`` pairs sorted by SNI, like Consul's sorted filter chains.
    """

    __slots__ = ("_routes", "_version")

    def __init__(self, routes: Mapping[str, Destination], version: str = "") -> None:
        self._routes: Mapping[str, Destination] = MappingProxyType(
            {sni: routes[sni] for sni in sorted(routes)}
        )
        self._version = version

    @classmethod
    def build(
        cls,
        destinations: Iterable[Destination],
        datacenter: str,
        trust_domain: str,
        version: str = "",
    ) -> RouteTable:
        """A table with one route per destination, named by the gateway's DC and trust domain.

        If two destinations produce the same SNI (the same service twice, or names that
        differ only in case) the first one keeps the name, matching the merge rule.
        """
        routes: dict[str, Destination] = {}
        for destination in destinations:
            if destination.egress:
                routes.update(_egress_routes(destination, datacenter, trust_domain))
                continue
            sni = service_sni(destination.service, datacenter, trust_domain)
            routes.setdefault(sni, destination)
        # service-resolver subsets: one route per subset at Consul's subset SNI, after
        # every service so a subset name never shadows a service's (Consul's filter chains).
        for destination in destinations:
            if destination.datacenter != datacenter:
                continue  # another DC's subsets are that DC's gateway's business
            for name, endpoints in destination.subsets:
                sni = service_sni(destination.service, datacenter, trust_domain, name)
                routes.setdefault(
                    sni, replace(destination, endpoints=endpoints, subsets=(), subset=name)
                )
        return cls(routes, version)

    @classmethod
    def empty(cls) -> RouteTable:
        """A table with no routes: every name is unknown."""
        return cls({})

    @property
    def version(self) -> str:
        """The catalog version this table was built from."""
        return self._version

    def lookup(self, sni: str) -> Destination | None:
        """The destination for an already normalised SNI, or ``None``."""
        return self._routes.get(sni)

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[tuple[str, Destination]]:
        return iter(self._routes.items())

    def __repr__(self) -> str:
        return f"<RouteTable {len(self)} routes, version {self._version!r}>"

    def services(self) -> frozenset[ServiceName]:
        """Every service the table routes to."""
        return frozenset(d.service for d in self._routes.values())

    def describe(self) -> list[dict[str, Any]]:
        """A JSON-ready listing for the admin ``/routes`` endpoint, sorted by SNI."""
        return [
            {
                "sni": sni,
                "service": d.service.name,
                "namespace": d.service.namespace,
                "partition": d.service.partition,
                "datacenter": d.datacenter,
                "protocol": d.protocol,
                "l7": serves_l7(d),
                "tls": d.tls.mode.value,
                "lb_policy": d.lb_policy,
                "subset": d.subset,
                **({"destination": list(d.egress)} if d.egress else {}),
                **({"resolver": dict(d.resolver)} if d.resolver else {}),
                "endpoints": [
                    {
                        "address": e.address,
                        "port": e.port,
                        "health": e.health.value,
                        "weight": e.weight,
                    }
                    for e in d.endpoints
                ],
            }
            for sni, d in self._routes.items()
        ]


def _egress_routes(
    destination: Destination, datacenter: str, trust_domain: str
) -> dict[str, Destination]:
    """A Consul destination's routes: one per address, reaching that address's endpoints
    (a host name's resolved addresses carry it as ``meta["hostname"]``)."""
    routes: dict[str, Destination] = {}
    for address in destination.egress:
        endpoints = tuple(
            e for e in destination.endpoints if e.meta.get("hostname", e.address) == address
        )
        sni = destination_sni(destination.service, address, datacenter, trust_domain)
        routes[sni] = replace(destination, endpoints=endpoints)
    return routes
