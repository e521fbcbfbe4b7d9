"""Catalog registrations: the body of ``PUT /v1/catalog/register`` or one element of a
``GET /v1/health/service/<svc>`` answer, with its checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gwcore.policy.consul_decode import (
    _MISSING,
    _Object,
    _Sink,
)
from gwcore.policy.consul_values import _EMPTY_META, CHECK_STATUSES, TYPICAL_KINDS
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    ServiceName,
)


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One catalog health check. ``service_id`` is empty for a node check."""

    check_id: str
    status: str
    service_id: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """The ``Service`` part of a registration: one instance."""

    service: ServiceName
    instance_id: str
    address: str
    port: int
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY_META, hash=False)
    weight_passing: int = 1
    weight_warning: int = 1
    kind: str = ""
    connect: bool = False  # Connect-native, or registered with a sidecar
    proxy_destination: str = ""  # for a connect-proxy: the service it fronts
    tags: tuple[str, ...] = ()
    wan: tuple[str, int] | None = None  # TaggedAddresses.wan (Address, Port), if tagged

    @property
    def typical(self) -> bool:
        """True for a plain service (not a proxy or gateway)."""
        return self.kind in TYPICAL_KINDS


@dataclass(frozen=True, slots=True)
class Registration:
    """A node, at most one service instance on it, and checks (node or service level)."""

    node: str
    address: str
    datacenter: str  # "" means the gateway's own datacenter
    service: ServiceRecord | None
    checks: tuple[CheckRecord, ...]
    origin: str
    where: str
    node_meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY_META, hash=False)
    wan_address: str | None = None  # the node's TaggedAddresses.wan, if tagged


def _parse_registration(sink: _Sink, doc: _Object) -> Registration:
    node_value = doc.raw("Node")
    if isinstance(node_value, Mapping):
        # One element of /v1/health/service/<svc>: {"Node": {...}, "Service": ..., "Checks": ...}
        node_obj = doc.child("Node")
        assert node_obj is not None
        node = node_obj.string("Node", required=True)
        address = node_obj.string("Address", required=True)
        datacenter = node_obj.string("Datacenter")
        node_meta = node_obj.string_map("Meta")
        tagged = node_obj.string_map("TaggedAddresses")
    else:
        # The body of PUT /v1/catalog/register.
        node = doc.string("Node", required=True)
        address = doc.string("Address", required=True)
        datacenter = doc.string("Datacenter")
        node_meta = doc.string_map("NodeMeta")
        tagged = doc.string_map("TaggedAddresses")
    service_obj = doc.child("Service")
    service = _parse_service(service_obj) if service_obj is not None else None
    checks: list[CheckRecord] = []
    single = doc.child("Check")
    for check in ([single] if single is not None else []) + doc.children("Checks"):
        check_node = check.string("Node")
        if check_node and node and check_node != node:
            check.problem("Node", f"names node {check_node!r}, not {node!r}")
        check_id = check.string("CheckID") or check.string("Name")
        if not check_id:
            check.problem("CheckID", "is required (or a Name)")
        status = check.string("Status") or "critical"
        if status not in CHECK_STATUSES:
            check.problem("Status", f"must be one of {', '.join(CHECK_STATUSES)}, not {status!r}")
        checks.append(
            CheckRecord(check_id, status, check.string("ServiceID"), check.string("Name"))
        )
    return Registration(
        node=node,
        address=address,
        datacenter=datacenter,
        service=service,
        checks=tuple(checks),
        origin=sink.origin,
        where=doc.where,
        node_meta=node_meta,
        wan_address=tagged.get("wan"),
    )


def _parse_service(svc: _Object) -> ServiceRecord:
    name = svc.string("Service", required=True)
    weight_passing, weight_warning = 1, 1
    weights = svc.child("Weights")
    if weights is not None:
        weight_passing = weights.integer("Passing", 1)
        weight_warning = weights.integer("Warning", 1)
    kind = svc.string("Kind")
    connect = False
    connect_obj = svc.child("Connect")
    if connect_obj is not None:
        connect = connect_obj.boolean("Native") or connect_obj.raw("SidecarService") not in (
            _MISSING,
            {},
        )
    proxy_destination = ""
    proxy = svc.child("Proxy")
    if proxy is not None and kind == "connect-proxy":
        proxy_destination = proxy.string("DestinationServiceName")
    tagged = svc.child("TaggedAddresses")
    wan_obj = tagged.child("wan") if tagged is not None else None
    wan = None
    if wan_obj is not None:
        wan = (wan_obj.string("Address"), wan_obj.integer("Port", 0, minimum=0, maximum=65535))
    return ServiceRecord(
        service=ServiceName(
            name,
            svc.string("Namespace") or DEFAULT_NAMESPACE,
            svc.string("Partition") or DEFAULT_PARTITION,
        ),
        instance_id=svc.string("ID") or name,
        address=svc.string("Address"),
        port=svc.integer("Port", 0, minimum=0, maximum=65535),
        meta=svc.string_map("Meta"),
        weight_passing=weight_passing,
        weight_warning=weight_warning,
        kind=kind,
        connect=connect,
        proxy_destination=proxy_destination,
        tags=svc.strings("Tags"),
        wan=wan,
    )
