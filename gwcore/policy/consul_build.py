"""Model objects built from Consul's documents: destinations with their endpoints, and, for
mesh sites, mesh gateways and mesh destinations.

The rules (health is the worst check, weights, wildcard links) are listed in
:mod:`gwcore.policy.consul_shapes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from gwcore.policy.consul_decode import (
    ShapeProblem,
    _at,
)
from gwcore.policy.consul_defaults_entry import resolve_protocol
from gwcore.policy.consul_values import MAX_WEIGHT, WILDCARD
from gwcore.policy.http_facts import MeshHttp
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    Destination,
    Endpoint,
    Health,
    Intention,
    MeshGateways,
    ServiceName,
    UpstreamTLS,
)

if TYPE_CHECKING:
    from gwcore.policy.consul_documents import CatalogDocuments
    from gwcore.policy.consul_gateway_entry import LinkedService
    from gwcore.policy.consul_registration import CheckRecord, Registration, ServiceRecord


# --- building model objects ----------------------------------------------------------


def protocols_of(docs: CatalogDocuments) -> Callable[[ServiceName], str]:
    """Each service's protocol as Consul resolves it (:func:`resolve_protocol`):
    ``service-defaults``, else its partition's ``proxy-defaults``, else ``tcp``."""
    services = {sd.service: sd for sd in docs.service_defaults}
    proxies = {pd.partition: pd for pd in docs.proxy_defaults}
    return lambda name: resolve_protocol(name, services, proxies)


def build_mesh_http(docs: CatalogDocuments, partition: str = DEFAULT_PARTITION) -> MeshHttp | None:
    """The HTTP options of ``partition``'s ``mesh`` entry; ``None`` when there is none."""
    entry = next((m for m in docs.mesh if m.partition == partition), None)
    return entry.http if entry is not None else None


def _service_order(name: ServiceName) -> tuple[str, str, str]:
    return (name.partition, name.namespace, name.name)


def build_destinations(
    docs: CatalogDocuments, gateway_name: str, datacenter: str
) -> tuple[tuple[Destination, ...], list[ShapeProblem]]:
    """The linked services of the ``terminating-gateway`` entry named ``gateway_name``.

    Entries for other gateways are ignored; no entry means no destinations. Registrations
    in ``datacenter`` (or naming none) are the endpoints. A linked service with no
    instance there but with instances registered in another datacenter (``Datacenter``
    on the registration, as ``/v1/health/service/<svc>?dc=<dc>`` reports them) is a
    destination *in that datacenter*, reached through mesh gateways (the mesh-gateway
    hop); if several other datacenters have it, the first by name is used and the
    choice is reported. A linked service with no instances anywhere is still a
    destination of ``datacenter``, with no endpoints. Destinations
    are sorted by (partition, namespace, name), endpoints by (node, instance ID, address,
    port), so equal content gives equal results whatever the document order. Problems
    are instances of a linked service that cannot be used (no port); they are left out.
    """
    problems: list[ShapeProblem] = []
    entry = next((g for g in docs.gateways if g.name == gateway_name), None)
    if entry is None:
        return (), problems
    partition = entry.partition or DEFAULT_PARTITION

    instances: dict[ServiceName, list[tuple[Registration, ServiceRecord]]] = {}
    connect_capable: set[ServiceName] = set()
    plain: set[ServiceName] = set()
    remote: dict[ServiceName, dict[str, list[tuple[Registration, ServiceRecord]]]] = {}
    checks_by_node: dict[tuple[str, str], list[CheckRecord]] = {}
    for reg in docs.registrations:
        if reg.datacenter and reg.datacenter != datacenter:
            checks_by_node.setdefault((reg.datacenter, reg.node), []).extend(reg.checks)
            if reg.service is not None and reg.service.typical:
                by_dc = remote.setdefault(reg.service.service, {})
                by_dc.setdefault(reg.datacenter, []).append((reg, reg.service))
            continue
        checks_by_node.setdefault((datacenter, reg.node), []).extend(reg.checks)
        svc = reg.service
        if svc is None:
            continue
        instances.setdefault(svc.service, []).append((reg, svc))
        if svc.connect:
            connect_capable.add(svc.service)
        if svc.kind == "connect-proxy" and svc.proxy_destination:
            connect_capable.add(
                ServiceName(svc.proxy_destination, svc.service.namespace, svc.service.partition)
            )
        if svc.typical:
            plain.add(svc.service)

    linked: dict[ServiceName, tuple[UpstreamTLS, bool]] = {}
    wildcards: dict[str, LinkedService] = {}
    for ls in entry.services:
        namespace = ls.namespace or entry.namespace or DEFAULT_NAMESPACE
        if ls.name == WILDCARD:
            wildcards[namespace] = ls
        else:
            linked[ServiceName(ls.name, namespace, partition)] = (ls.tls, False)
    for name in plain - connect_capable:
        wildcard = wildcards.get(name.namespace)
        if wildcard is not None and name.partition == partition and name not in linked:
            linked[name] = (wildcard.tls, True)

    protocol = protocols_of(docs)
    destinations = []
    for name in sorted(linked, key=_service_order):
        tls, from_wildcard = linked[name]
        endpoints = []
        located = datacenter
        found = instances.get(name, [])
        if not found and name in remote:
            located = min(remote[name])
            found = remote[name][located]
            if len(remote[name]) > 1:
                first = found[0][0]
                problems.append(
                    ShapeProblem(
                        first.origin,
                        first.where or "(document)",
                        f"linked service {str(name)!r} has no instance in {datacenter} and "
                        f"instances in {', '.join(sorted(remote[name]))}; using {located}",
                    )
                )
        for reg, svc in found:
            if svc.port == 0:
                problems.append(
                    ShapeProblem(
                        reg.origin,
                        _at(reg.where, "Service.Port"),
                        f"instance {svc.instance_id!r} of linked service {str(name)!r} "
                        "has no port; it is left out",
                    )
                )
                continue
            checks = checks_by_node.get((reg.datacenter or datacenter, reg.node), ())
            endpoints.append(_endpoint(reg, svc, checks, wan=located != datacenter))
        endpoints.sort(key=lambda e: (e.node, e.instance_id, e.address, e.port))
        destinations.append(
            Destination(
                service=name,
                datacenter=located,
                endpoints=tuple(endpoints),
                tls=tls,
                protocol=protocol(name),
                from_wildcard=from_wildcard,
            )
        )
    return tuple(destinations), problems


def best_address(reg: Registration, svc: ServiceRecord, wan: bool) -> tuple[str, int]:
    """Consul's ``CheckServiceNode.BestAddress``: with ``wan`` (an instance of another
    datacenter) the service's ``TaggedAddresses.wan`` (its port when non-zero), then the
    service address, then the node's ``TaggedAddresses.wan``, then the node address."""
    address, port = svc.address, svc.port
    if wan and svc.wan is not None:
        address, port = svc.wan[0], svc.wan[1] or svc.port
    if not address:
        address = reg.wan_address if wan and reg.wan_address is not None else reg.address
    return address, port


def _endpoint(
    reg: Registration, svc: ServiceRecord, checks: Iterable[CheckRecord], wan: bool = False
) -> Endpoint:
    """Consul's calculateEndpointHealthAndWeight, with BestAddress for the address."""
    statuses = [c.status for c in checks if c.service_id in ("", svc.instance_id)]
    health = Health.worst(statuses)
    weight = svc.weight_warning if health is Health.WARNING else svc.weight_passing
    if weight < 1:
        health, weight = Health.CRITICAL, 1
    address, port = best_address(reg, svc, wan)
    return Endpoint(
        address=address,
        port=port,
        health=health,
        weight=min(weight, MAX_WEIGHT),
        instance_id=svc.instance_id,
        node=reg.node,
        meta=svc.meta,
    )


MESH_GATEWAY_KIND = "mesh-gateway"
TERMINATING_GATEWAY_KIND = "terminating-gateway"
CONNECT_PROXY_KIND = "connect-proxy"


def build_mesh_gateways(docs: CatalogDocuments, datacenter: str) -> tuple[MeshGateways, ...]:
    """Every datacenter's mesh gateways: registrations of ``Kind: "mesh-gateway"``.

    A registration without ``Datacenter`` is in ``datacenter``. The address is Consul's
    BestAddress: the LAN form in ``datacenter``, the WAN form (:func:`best_address`) for
    other datacenters' gateways; health and weight as for any instance. Sorted by
    datacenter, endpoints as in :func:`build_destinations`.
    """
    checks: dict[tuple[str, str], list[CheckRecord]] = {}
    for reg in docs.registrations:
        checks.setdefault((reg.datacenter or datacenter, reg.node), []).extend(reg.checks)
    found: dict[str, list[Endpoint]] = {}
    for reg in docs.registrations:
        svc = reg.service
        if svc is None or svc.kind != MESH_GATEWAY_KIND or svc.port == 0:
            continue
        dc = reg.datacenter or datacenter
        wan = dc != datacenter
        found.setdefault(dc, []).append(_endpoint(reg, svc, checks.get((dc, reg.node), ()), wan))
    return tuple(
        MeshGateways(dc, tuple(sorted(eps, key=lambda e: (e.node, e.instance_id, e.address))))
        for dc, eps in sorted(found.items())
    )


def build_mesh_destinations(docs: CatalogDocuments, datacenter: str) -> tuple[Destination, ...]:
    """The services a mesh gateway of ``datacenter`` routes to, with their Connect endpoints.

    Consul's ``/v1/health/connect/<svc>`` in that datacenter: the instances of every
    terminating gateway (``Kind: "terminating-gateway"``, named like a
    ``terminating-gateway`` entry) that links the service, and the service's sidecar
    proxies (``Kind: "connect-proxy"`` with ``Proxy.DestinationServiceName``). Only
    registrations in ``datacenter`` count. Sorted like :func:`build_destinations`.
    """
    local = [r for r in docs.registrations if not r.datacenter or r.datacenter == datacenter]
    node_checks: dict[str, list[CheckRecord]] = {}
    for reg in local:
        node_checks.setdefault(reg.node, []).extend(reg.checks)
    endpoints: dict[ServiceName, list[Endpoint]] = {}
    gateway_instances: dict[str, list[Endpoint]] = {}
    for reg in local:
        svc = reg.service
        if svc is None or svc.port == 0:
            continue
        endpoint = _endpoint(reg, svc, node_checks.get(reg.node, ()))
        if svc.kind == TERMINATING_GATEWAY_KIND:
            gateway_instances.setdefault(svc.service.name, []).append(endpoint)
        elif svc.kind == CONNECT_PROXY_KIND and svc.proxy_destination:
            target = ServiceName(
                svc.proxy_destination, svc.service.namespace, svc.service.partition
            )
            endpoints.setdefault(target, []).append(endpoint)
    for entry in docs.gateways:
        instances = gateway_instances.get(entry.name)
        if not instances:
            continue
        linked, _ = build_destinations(docs, entry.name, datacenter)
        for destination in linked:
            if destination.datacenter == datacenter:
                endpoints.setdefault(destination.service, []).extend(instances)
    protocol = protocols_of(docs)
    return tuple(
        Destination(
            service=name,
            datacenter=datacenter,
            endpoints=tuple(
                sorted(set(endpoints[name]), key=lambda e: (e.node, e.instance_id, e.address))
            ),
            protocol=protocol(name),
        )
        for name in sorted(endpoints, key=_service_order)
    )


def build_connect_destinations(
    answers: Mapping[ServiceName, CatalogDocuments],
    datacenter: str,
    protocols: Mapping[ServiceName, str] | None = None,
) -> tuple[Destination, ...]:
    """The services a mesh gateway of ``datacenter`` routes to, from Consul's answers.

    ``answers`` holds, per service, what ``/v1/health/connect/<svc>`` answered (sidecars,
    Connect-native instances, the terminating gateways that link it), as Consul's mesh
    gateway watches it (``agent/proxycfg/mesh_gateway.go``, ``connect-service:``). Each
    instance carries its own checks. A service with no such instance has no route, as
    Consul's mesh gateway drops the service group of an empty answer. Sorted like
    :func:`build_destinations`.
    """
    protocols = protocols or {}
    out = []
    for name in sorted(answers, key=_service_order):
        found = {
            _endpoint(reg, reg.service, reg.checks)
            for reg in answers[name].registrations
            if reg.service is not None and reg.service.port != 0
        }
        if found:
            endpoints = tuple(sorted(found, key=lambda e: (e.node, e.instance_id, e.address)))
            protocol = protocols.get(name, "tcp")
            out.append(
                Destination(
                    service=name, datacenter=datacenter, endpoints=endpoints, protocol=protocol
                )
            )
    return tuple(out)


def build_intentions(docs: CatalogDocuments) -> tuple[Intention, ...]:
    """Every intention of every ``service-intentions`` entry, flattened.

    Entries are ordered by destination (partition, namespace, name); sources keep their
    order within an entry. Precedence is the authorization engine's business.
    """
    entries = sorted(docs.intentions, key=lambda e: _service_order(e.destination))
    return tuple(intention for entry in entries for intention in entry.intentions)
