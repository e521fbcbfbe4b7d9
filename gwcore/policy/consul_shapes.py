"""Consul's own JSON documents, read into model objects, so a Consul user's files work unchanged.

Sans-IO: values (or bytes) in, :class:`CatalogDocuments`, model objects and
:class:`ShapeProblem` lists out. Nothing here raises for bad input.

Documents tgw reads (a file holds one JSON object or a list of them):

- ``terminating-gateway`` config entries: which services a gateway links, with TLS options;
- ``service-intentions`` config entries: who may talk to whom (L4 action or L7 permissions);
- ``service-defaults`` config entries: a service's ``Protocol`` (default ``tcp``);
- catalog registrations: the body of ``PUT /v1/catalog/register`` (``Node`` is a name), or
  one element of a ``GET /v1/health/service/<svc>`` answer (``Node`` is an object).

Rules, as Consul applies them (see ``reference/consul-terminating-gateway.md`` §1, §3, §6):

- Field names match the way Consul's decoder does: case-insensitively, with or without
  underscores (``CAFile``, ``cafile`` and ``ca_file`` are one field). ``null`` is "absent".
- Config entries reject unknown fields (a typo such as ``CaFiel`` is an error, not a
  silent plaintext hop); registrations ignore them, because API dumps carry many.
- A document with any problem is left out whole, never half applied. Of two documents
  with the same identity (the same gateway name, the same ``service-defaults`` or
  ``service-intentions`` name, the same instance on the same node), the first is kept and
  the second is reported and left out (:func:`merge_documents`).
- A check without ``Status`` is ``critical`` (Consul's default); a check without
  ``ServiceID`` is a node check and counts against every service on that node.
- Endpoint health is the worst of the instance's service checks and its node's checks;
  weight is ``Weights.Passing`` (``Weights.Warning`` while warning), 1 when absent,
  clamped to 1..128, and a weight below 1 makes the instance critical.
- A wildcard link (``"*"``) links every registered service of its namespace that has a
  plain (``Kind`` empty) instance and is not Connect-capable (native, with a sidecar, or
  the destination of a ``connect-proxy``); an entry naming a service replaces the
  wildcard's options for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gwcore.policy.consul_decode import (
    _MISSING,
    ShapeProblem,
    _at,
    _json_type,
    _norm,
    _Object,
    _Sink,
)
from gwcore.policy.consul_kinds import SkippedEntry, skipped_kind
from gwcore.policy.destinations import EgressDestination, parse_destination
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

TERMINATING_GATEWAY = "terminating-gateway"
SERVICE_INTENTIONS = "service-intentions"
SERVICE_DEFAULTS = "service-defaults"
REGISTRATION = "registration"
UNKNOWN = "unknown"
SKIPPED = "skipped"
CONFIG_KINDS = (TERMINATING_GATEWAY, SERVICE_INTENTIONS, SERVICE_DEFAULTS)

WILDCARD = "*"
PROTOCOLS = ("tcp", "http", "http2", "grpc")
CHECK_STATUSES = ("passing", "warning", "critical", "maintenance")
INTENTION_ACTIONS = ("allow", "deny")
MAX_WEIGHT = 128
MAX_HASH = 2**64 - 1  # Consul's Hash is a uint64
TYPICAL_KINDS = ("", "typical")

_EMPTY_META: Mapping[str, str] = MappingProxyType({})

_GATEWAY_FIELDS = (
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Meta",
    "Services",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
)
_LINKED_SERVICE_FIELDS = (
    "Name",
    "Namespace",
    "Partition",
    "CAFile",
    "CertFile",
    "KeyFile",
    "SNI",
    "DisableAutoHostRewrite",
)
_INTENTIONS_FIELDS = (
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Sources",
    "JWT",
    "Meta",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
)
_SOURCE_FIELDS = (
    "Name",
    "Namespace",
    "Partition",
    "Peer",
    "SamenessGroup",
    "Action",
    "Permissions",
    "Precedence",
    "Type",
    "Description",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
)


@dataclass(frozen=True, slots=True)
class LinkedService:
    """One ``Services[]`` item of a ``terminating-gateway`` entry (``name`` may be ``*``)."""

    name: str
    namespace: str  # "" means the entry's namespace
    tls: UpstreamTLS
    where: str


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    """A ``terminating-gateway`` config entry."""

    name: str
    namespace: str
    partition: str
    services: tuple[LinkedService, ...]
    origin: str
    where: str


@dataclass(frozen=True, slots=True)
class ServiceDefaults:
    """The part of a ``service-defaults`` entry tgw uses."""

    service: ServiceName
    protocol: str
    origin: str
    where: str
    destination: EgressDestination | None = None  # gwcore.policy.destinations


@dataclass(frozen=True, slots=True)
class IntentionsEntry:
    """A ``service-intentions`` entry, its sources already flattened into intentions."""

    destination: ServiceName
    intentions: tuple[Intention, ...]
    origin: str
    where: str


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


@dataclass(frozen=True, slots=True)
class CatalogDocuments:
    """Every document read, by kind, in the order read. Each piece knows its origin."""

    gateways: tuple[GatewayEntry, ...] = ()
    registrations: tuple[Registration, ...] = ()
    service_defaults: tuple[ServiceDefaults, ...] = ()
    intentions: tuple[IntentionsEntry, ...] = ()
    skipped: tuple[SkippedEntry, ...] = ()  # kinds tgw does not use (consul_kinds)


EMPTY_DOCUMENTS = CatalogDocuments()


def _wildcard_problem(value: str) -> str | None:
    if WILDCARD in value and value != WILDCARD:
        return f"{value!r} is a partial wildcard; use '*' alone or an exact name"
    return None


# --- the four kinds of document ------------------------------------------------------


def classify(document: Mapping[str, Any]) -> str:
    """Which kind of document this is: one of ``terminating-gateway``,
    ``service-intentions``, ``service-defaults``, ``registration`` or ``unknown``.

    Config entries are told by their ``Kind``; a document without ``Kind`` but with a
    ``Node`` (a name or a node object) is a catalog registration.
    """
    if not isinstance(document, Mapping):
        return UNKNOWN
    fields = {_norm(k): v for k, v in document.items() if isinstance(k, str)}
    kind = fields.get("kind")
    if kind is not None:
        if skipped_kind(kind):
            return SKIPPED
        return kind if isinstance(kind, str) and kind in CONFIG_KINDS else UNKNOWN
    if fields.get("node") is not None:
        return REGISTRATION
    return UNKNOWN


def _parse_gateway(sink: _Sink, doc: _Object) -> GatewayEntry:
    doc.string("Kind")
    name = doc.string("Name", required=True)
    namespace = doc.string("Namespace")
    partition = doc.string("Partition")
    doc.string_map("Meta")
    for counter in ("CreateIndex", "ModifyIndex"):
        doc.integer(counter, 0)
    doc.integer("Hash", 0, minimum=0, maximum=MAX_HASH)
    services: list[LinkedService] = []
    seen: dict[tuple[str, str], str] = {}
    for svc in doc.children("Services", _LINKED_SERVICE_FIELDS):
        svc_name = svc.string("Name", required=True)
        svc_ns = svc.string("Namespace")
        svc_partition = svc.string("Partition")
        if svc_partition and svc_partition != (partition or DEFAULT_PARTITION):
            svc.problem(
                "Partition", "a terminating gateway cannot link another partition's service"
            )
        if svc_ns == WILDCARD:
            svc.problem(
                "Namespace", "Wildcard namespace is not supported for terminating gateway services"
            )
        tls = UpstreamTLS(
            ca_file=svc.string("CAFile"),
            cert_file=svc.string("CertFile"),
            key_file=svc.string("KeyFile"),
            sni=svc.string("SNI"),
        )
        svc.boolean("DisableAutoHostRewrite")
        if (tls.cert_file or tls.key_file) and not (tls.ca_file and tls.cert_file and tls.key_file):
            svc.problem(
                "CertFile" if tls.cert_file else "KeyFile",
                "must have a CertFile, CAFile, and KeyFile specified for TLS origination",
            )
        svc.finish()
        key = (svc_ns or namespace or DEFAULT_NAMESPACE, svc_name)
        if svc_name and key in seen:
            svc.problem(
                "Name",
                f"Service {svc_name!r} was specified more than once within a namespace "
                f"(also at {seen[key]})",
            )
        seen.setdefault(key, svc.where)
        services.append(LinkedService(svc_name, svc_ns, tls, svc.where))
    doc.finish()
    return GatewayEntry(name, namespace, partition, tuple(services), sink.origin, doc.where)


def _parse_service_defaults(sink: _Sink, doc: _Object) -> ServiceDefaults:
    # Lenient: service-defaults carries many fields tgw has no use for (Mode, Expose, ...).
    name = doc.string("Name", required=True)
    if name == WILDCARD or _wildcard_problem(name):
        doc.problem("Name", "must name one service")
    protocol = doc.string("Protocol", "tcp").lower() or "tcp"
    if protocol not in PROTOCOLS:
        doc.problem("Protocol", f"must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    service = ServiceName(
        name,
        doc.string("Namespace") or DEFAULT_NAMESPACE,
        doc.string("Partition") or DEFAULT_PARTITION,
    )
    destination = None
    if doc.raw("Destination") is not _MISSING:
        destination, found = parse_destination(doc.raw("Destination"))
        for key, message in found:
            doc.problem(f"Destination.{key}".rstrip("."), message)
    return ServiceDefaults(service, protocol, sink.origin, doc.where, destination)


def _parse_intentions(sink: _Sink, doc: _Object) -> IntentionsEntry:
    doc.string("Kind")
    name = doc.string("Name", required=True)
    if problem := _wildcard_problem(name):
        doc.problem("Name", problem)
    namespace = doc.string("Namespace") or DEFAULT_NAMESPACE
    if problem := _wildcard_problem(namespace):
        doc.problem("Namespace", problem)
    elif namespace == WILDCARD and name != WILDCARD:
        doc.problem("Namespace", "a wildcard namespace requires a wildcard Name")
    partition = doc.string("Partition") or DEFAULT_PARTITION
    if doc.raw("JWT") not in (_MISSING, {}):
        # tgw cannot check JWTs; accepting the entry would let traffic past a requirement.
        doc.problem("JWT", "JWT requirements are not supported by tgw")
    doc.string_map("Meta")
    for counter in ("CreateIndex", "ModifyIndex"):
        doc.integer(counter, 0)
    doc.integer("Hash", 0, minimum=0, maximum=MAX_HASH)
    destination = ServiceName(name, namespace, partition)
    intentions: list[Intention] = []
    seen: dict[tuple[str, ...], str] = {}
    for src in doc.children("Sources", _SOURCE_FIELDS):
        intention = _parse_source(sink, src, destination)
        # Consul's duplicate key: name, namespace, partition, peer and sameness group.
        key = (
            intention.source.partition,
            intention.source.namespace,
            intention.source.name,
            intention.source_peer,
            intention.source_sameness_group,
        )
        if intention.source.name and key in seen:
            src.problem("Name", f"names the same source as {seen[key]}")
        seen.setdefault(key, src.where)
        intentions.append(intention)
    doc.finish()
    return IntentionsEntry(destination, tuple(intentions), sink.origin, doc.where)


def _parse_source(sink: _Sink, src: _Object, destination: ServiceName) -> Intention:
    name = src.string("Name", required=True)
    if problem := _wildcard_problem(name):
        src.problem("Name", problem)
    peer, sameness = src.string("Peer"), src.string("SamenessGroup")
    local = not (peer or sameness)
    # normalize(): a local source without Namespace/Partition has the destination's
    # (never a wildcard one); a peer's source is in its own cluster.
    inherit = lambda v: v if local and v != WILDCARD else DEFAULT_NAMESPACE  # noqa: E731
    namespace = src.string("Namespace") or inherit(destination.namespace)
    if problem := _wildcard_problem(namespace):
        src.problem("Namespace", problem)
    elif namespace == WILDCARD and name != WILDCARD:
        src.problem("Namespace", "a wildcard namespace requires a wildcard Name")
    explicit_partition = src.string("Partition")
    partition = explicit_partition or (
        destination.partition if local and destination.partition != WILDCARD else DEFAULT_PARTITION
    )
    if problem := _wildcard_problem(partition):
        src.problem("Partition", problem)
    if peer and sameness:
        src.problem("Peer", "Peer and SamenessGroup cannot both be set")
    elif (peer or sameness) and explicit_partition:
        src.problem("Partition", f"cannot be set with {'Peer' if peer else 'SamenessGroup'}")
    source_type = src.string("Type", "consul")
    if source_type not in ("", "consul"):
        src.problem("Type", f'must be "consul", not {source_type!r}')
    description = src.string("Description")
    src.integer("Precedence", 0)
    src.string("LegacyID")

    action = src.string("Action")
    raw_permissions = src.raw("Permissions")
    permissions: tuple[Mapping[str, object], ...] = ()
    if raw_permissions is not _MISSING:
        if not isinstance(raw_permissions, list) or not all(
            isinstance(p, Mapping) for p in raw_permissions
        ):
            src.problem("Permissions", "must be a list of objects")
        else:
            permissions = tuple(raw_permissions)
    if action and permissions:
        src.problem("Action", "Action and Permissions are mutually exclusive")
    elif not action and raw_permissions is _MISSING:
        src.problem("Action", "one of Action or Permissions is required")
    elif not action and raw_permissions == []:
        src.problem("Permissions", "must not be empty when there is no Action")
    if action:
        action = action.lower()
        if action not in INTENTION_ACTIONS:
            src.problem("Action", f'must be "allow" or "deny", not {action!r}')
    if permissions and destination.name == WILDCARD:
        src.problem("Permissions", "L7 Permissions cannot be used on a wildcard destination")
    src.finish()
    return Intention(
        source=ServiceName(name, namespace, partition),
        destination=destination,
        action="" if permissions else action,
        permissions=permissions,
        description=description,
        origin=sink.origin,
        source_peer=peer,
        source_sameness_group=sameness,
    )


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


def _parse_one(sink: _Sink, where: str, value: Any) -> CatalogDocuments | None:
    """Parse one document; ``None`` (with problems in ``sink``) if anything is wrong."""
    if not isinstance(value, Mapping):
        sink.problem(
            where,
            "must be a JSON object (a Consul config entry or catalog registration), "
            f"not {_json_type(value)}",
        )
        return None
    before = len(sink.problems)
    kind = classify(value)
    if kind == TERMINATING_GATEWAY:
        docs = CatalogDocuments(
            gateways=(
                _parse_gateway(sink, _Object(sink, where, value, _GATEWAY_FIELDS, weak=True)),
            )
        )
    elif kind == SERVICE_INTENTIONS:
        entry = _parse_intentions(sink, _Object(sink, where, value, _INTENTIONS_FIELDS, weak=True))
        docs = CatalogDocuments(intentions=(entry,))
    elif kind == SERVICE_DEFAULTS:
        defaults = _parse_service_defaults(sink, _Object(sink, where, value, weak=True))
        docs = CatalogDocuments(service_defaults=(defaults,))
    elif kind == SKIPPED:
        obj = _Object(sink, where, value)
        entry = SkippedEntry(obj.string("Kind"), obj.string("Name"), sink.origin, where)
        docs = CatalogDocuments(skipped=(entry,))
    elif kind == REGISTRATION:
        docs = CatalogDocuments(
            registrations=(_parse_registration(sink, _Object(sink, where, value)),)
        )
    else:
        obj = _Object(sink, where, value)
        declared = obj.raw("Kind")
        if declared is _MISSING:
            obj.problem(
                "Kind",
                "is missing, and the document is not a catalog registration (no Node) either",
            )
        else:
            obj.problem(
                "Kind",
                f"{declared!r} is not a config-entry kind Consul knows (tgw reads "
                f"{', '.join(CONFIG_KINDS)} and catalog registrations without Kind)",
            )
        return None
    return docs if len(sink.problems) == before else None


def parse_documents(
    items: Iterable[tuple[str, Any]],
) -> tuple[CatalogDocuments, list[ShapeProblem]]:
    """Read decoded JSON values, each ``(origin, value)``; a value is a document or a list.

    Returns what was read and every problem found. A document with a problem is left
    out whole; duplicates among the items are resolved as :func:`merge_documents` does.
    Never raises for bad input.
    """
    parts: list[CatalogDocuments] = []
    problems: list[ShapeProblem] = []
    for origin, value in items:
        sink = _Sink(origin)
        if isinstance(value, list):
            for i, document in enumerate(value):
                parsed = _parse_one(sink, f"[{i}]", document)
                if parsed is not None:
                    parts.append(parsed)
        else:
            parsed = _parse_one(sink, "", value)
            if parsed is not None:
                parts.append(parsed)
        problems += sink.problems
    docs, conflicts = merge_documents(parts)
    return docs, problems + conflicts


def decode_documents(origin: str, data: bytes) -> tuple[CatalogDocuments, list[ShapeProblem]]:
    """Decode one file's bytes (JSON, UTF-8) and parse it like :func:`parse_documents`."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        return EMPTY_DOCUMENTS, [ShapeProblem(origin, where, f"invalid JSON: {e.msg}")]
    except (ValueError, RecursionError) as e:
        return EMPTY_DOCUMENTS, [ShapeProblem(origin, "(document)", f"invalid JSON: {e}")]
    return parse_documents([(origin, value)])


def merge_documents(
    parts: Iterable[CatalogDocuments],
) -> tuple[CatalogDocuments, list[ShapeProblem]]:
    """Combine documents read separately (one part per file, say), in the order given.

    Of two documents with the same identity the first is kept; the later one is
    reported and left out. Identities: a gateway's ``Name``; a ``service-defaults`` or
    ``service-intentions`` entry's service; a registered instance's (datacenter, node,
    service ID). Registrations without a service and checks never conflict.
    """
    problems: list[ShapeProblem] = []
    gateways: dict[str, GatewayEntry] = {}
    defaults: dict[ServiceName, ServiceDefaults] = {}
    intentions: dict[ServiceName, IntentionsEntry] = {}
    instances: dict[tuple[str, str, ServiceName, str], Registration] = {}
    registrations: list[Registration] = []
    skipped: list[SkippedEntry] = []

    def conflict(origin: str, where: str, what: str, first_origin: str, first_where: str) -> None:
        first = f"{first_origin} {first_where}" if first_where else first_origin
        problems.append(
            ShapeProblem(origin, where or "(document)", f"{what} is already defined by {first}")
        )

    for part in parts:
        skipped += part.skipped
        for gw in part.gateways:
            if gw.name in gateways:
                first = gateways[gw.name]
                what = f"terminating-gateway {gw.name!r}"
                conflict(gw.origin, gw.where, what, first.origin, first.where)
            else:
                gateways[gw.name] = gw
        for sd in part.service_defaults:
            if sd.service in defaults:
                first = defaults[sd.service]
                what = f"service-defaults {str(sd.service)!r}"
                conflict(sd.origin, sd.where, what, first.origin, first.where)
            else:
                defaults[sd.service] = sd
        for ie in part.intentions:
            if ie.destination in intentions:
                first = intentions[ie.destination]
                what = f"service-intentions {str(ie.destination)!r}"
                conflict(ie.origin, ie.where, what, first.origin, first.where)
            else:
                intentions[ie.destination] = ie
        for reg in part.registrations:
            if reg.service is not None:
                key = (reg.datacenter, reg.node, reg.service.service, reg.service.instance_id)
                if key in instances:
                    first = instances[key]
                    what = f"instance {reg.service.instance_id!r} on node {reg.node!r}"
                    conflict(reg.origin, reg.where, what, first.origin, first.where)
                    continue
                instances[key] = reg
            registrations.append(reg)
    merged = CatalogDocuments(
        gateways=tuple(gateways.values()),
        registrations=tuple(registrations),
        service_defaults=tuple(defaults.values()),
        intentions=tuple(intentions.values()),
        skipped=tuple(skipped),
    )
    return merged, problems


# --- building model objects ----------------------------------------------------------


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

    protocols = {sd.service: sd.protocol for sd in docs.service_defaults}
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
                protocol=protocols.get(name, "tcp"),
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


def build_intentions(docs: CatalogDocuments) -> tuple[Intention, ...]:
    """Every intention of every ``service-intentions`` entry, flattened.

    Entries are ordered by destination (partition, namespace, name); sources keep their
    order within an entry. Precedence is the authorization engine's business.
    """
    entries = sorted(docs.intentions, key=lambda e: _service_order(e.destination))
    return tuple(intention for entry in entries for intention in entry.intentions)


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
    protocols = {sd.service: sd.protocol for sd in docs.service_defaults}
    return tuple(
        Destination(
            service=name,
            datacenter=datacenter,
            endpoints=tuple(
                sorted(set(endpoints[name]), key=lambda e: (e.node, e.instance_id, e.address))
            ),
            protocol=protocols.get(name, "tcp"),
        )
        for name in sorted(endpoints, key=_service_order)
    )
