"""service-resolver subsets applied to a mesh site's destinations (sans-IO).

Consul's mesh gateway builds one cluster per subset of each local service
(``endpointsFromServicesAndResolvers`` in agent/xds/endpoints.go): the subset's
endpoints are the service's Connect endpoints (``/v1/health/connect/<svc>``: its
sidecars, the terminating gateways that link it) that the subset's ``Filter`` selects,
evaluated on each endpoint's own catalog entry (node, service, checks; for a
terminating gateway that is the gateway's registration, as in Consul). With
``OnlyPassing`` an instance with any non-passing check is left out (Consul marks it
unhealthy). ``DefaultSubset`` replaces the unsubsetted name's endpoints with that
subset's.

A filter that cannot be evaluated on an instance (go-bexpr returns an error: a field
that does not exist, a value of the wrong kind) leaves that subset without endpoints
and is reported, naming the entry and the subset (Consul fails the whole endpoint
update instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from gwcore.policy.bexpr import BexprEvalError, Struct
from gwcore.policy.consul_shapes import CatalogDocuments, CheckRecord, Registration, ShapeProblem
from gwcore.policy.model import Destination, Endpoint, Health, ServiceName
from gwcore.policy.resolver_entry import ResolverEntry


def instance_datum(reg: Registration, checks: Iterable[CheckRecord], datacenter: str) -> Struct:
    """A CheckServiceNode as go-bexpr sees it (fields as Consul's structs name them)."""
    svc = reg.service
    assert svc is not None
    own = [c for c in checks if c.service_id in ("", svc.instance_id)]
    return Struct(
        Node=Struct(
            ID="",
            Node=reg.node,
            Address=reg.address,
            Datacenter=reg.datacenter or datacenter,
            PeerName="",
            TaggedAddresses={} if reg.wan_address is None else {"wan": reg.wan_address},
            Meta=dict(reg.node_meta),
        ),
        Service=Struct(
            Kind=svc.kind,
            ID=svc.instance_id,
            Service=svc.service.name,
            Tags=list(svc.tags),
            Address=svc.address,
            TaggedAddresses=(
                {} if svc.wan is None else {"wan": Struct(Address=svc.wan[0], Port=svc.wan[1])}
            ),
            Meta=dict(svc.meta),
            Port=svc.port,
            SocketPath="",
            Weights=Struct(Passing=svc.weight_passing, Warning=svc.weight_warning),
            EnableTagOverride=False,
            Proxy=Struct(DestinationServiceName=svc.proxy_destination),
            Connect=Struct(Native=svc.connect and svc.kind == ""),
            PeerName="",
        ),
        Checks=[
            Struct(
                Node=reg.node,
                CheckID=c.check_id,
                Name=c.name,
                Status=c.status,
                ServiceID=c.service_id,
                ServiceName=svc.service.name if c.service_id else "",
            )
            for c in own
        ],
    )


def _instances(
    docs: CatalogDocuments, datacenter: str
) -> Mapping[tuple[str, str], tuple[Registration, list[CheckRecord]]]:
    local = [r for r in docs.registrations if not r.datacenter or r.datacenter == datacenter]
    checks: dict[str, list[CheckRecord]] = {}
    for reg in local:
        checks.setdefault(reg.node, []).extend(reg.checks)
    return {
        (reg.node, reg.service.instance_id): (reg, checks.get(reg.node, []))
        for reg in local
        if reg.service is not None
    }


def apply_subsets(
    destinations: Iterable[Destination],
    docs: CatalogDocuments,
    resolvers: Mapping[ServiceName, ResolverEntry],
    datacenter: str,
) -> tuple[tuple[Destination, ...], list[ShapeProblem]]:
    """Each destination with a resolver gets its subsets (and DefaultSubset applied)."""
    instances = _instances(docs, datacenter)
    problems: list[ShapeProblem] = []
    out = []
    for destination in destinations:
        entry = resolvers.get(destination.service)
        if entry is None or not entry.subsets:
            out.append(destination)
            continue
        subsets: dict[str, tuple[Endpoint, ...]] = {}
        for name, subset in sorted(entry.subsets.items()):
            chosen: list[Endpoint] = []
            for endpoint in destination.endpoints:
                found = instances.get((endpoint.node, endpoint.instance_id))
                if found is None:
                    continue
                if subset.only_passing and endpoint.health is not Health.PASSING:
                    continue
                datum: Any = instance_datum(found[0], found[1], datacenter)
                try:
                    selected = subset.filter(datum)
                except BexprEvalError as e:
                    problems.append(
                        ShapeProblem(
                            entry.origin,
                            f"{entry.where}.Subsets.{name}.Filter".lstrip("."),
                            f"cannot be evaluated on instance {endpoint.instance_id!r} of node "
                            f"{endpoint.node!r}: {e}; subset {name!r} has no endpoints",
                        )
                    )
                    chosen = []
                    break
                if selected:
                    chosen.append(endpoint)
            subsets[name] = tuple(chosen)
        endpoints = subsets.get(entry.default_subset, destination.endpoints)
        out.append(
            dataclasses.replace(destination, endpoints=endpoints, subsets=tuple(subsets.items()))
        )
    return tuple(out), problems
