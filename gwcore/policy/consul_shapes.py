"""Consul's own JSON documents, read into model objects, so a Consul user's files work unchanged.

Sans-IO: values (or bytes) in, :class:`CatalogDocuments`, model objects and
:class:`ShapeProblem` lists out. Nothing here raises for bad input.

This module reads a document's kind and dispatches; each kind has its own module:
``consul_gateway_entry``, ``consul_intentions_entry``, ``consul_defaults_entry``,
``consul_registration``; shared names are in ``consul_values``, and the model objects are
built in ``consul_build``. Every public name stays importable from here.

Documents tgw reads (a file holds one JSON object or a list of them):

- ``terminating-gateway`` config entries: which services a gateway links, with TLS options;
- ``service-intentions`` config entries: who may talk to whom (L4 action or L7 permissions);
- ``service-defaults`` config entries: a service's ``Protocol``;
- ``proxy-defaults`` config entries (``global``): ``Config.protocol``, the protocol of a
  service without ``service-defaults`` (else ``tcp``);
- ``mesh`` config entries: the ``HTTP`` options (:mod:`gwcore.policy.consul_mesh_entry`);
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
from typing import Any

from gwcore.policy.consul_build import (
    CONNECT_PROXY_KIND,
    MESH_GATEWAY_KIND,
    TERMINATING_GATEWAY_KIND,
    best_address,
    build_destinations,
    build_intentions,
    build_mesh_destinations,
    build_mesh_gateways,
    build_mesh_http,
    protocols_of,
)
from gwcore.policy.consul_decode import (
    _MISSING,
    ShapeProblem,
    _json_type,
    _norm,
    _Object,
    _Sink,
)
from gwcore.policy.consul_defaults_entry import (
    ProxyDefaults,
    ServiceDefaults,
    _parse_proxy_defaults,
    _parse_service_defaults,
)
from gwcore.policy.consul_documents import EMPTY_DOCUMENTS, CatalogDocuments
from gwcore.policy.consul_gateway_entry import (
    _GATEWAY_FIELDS,
    GatewayEntry,
    LinkedService,
    _parse_gateway,
)
from gwcore.policy.consul_intentions_entry import (
    _INTENTIONS_FIELDS,
    IntentionsEntry,
    _parse_intentions,
)
from gwcore.policy.consul_kinds import SkippedEntry, skipped_kind
from gwcore.policy.consul_mesh_entry import MeshEntry, _parse_mesh
from gwcore.policy.consul_registration import (
    CheckRecord,
    Registration,
    ServiceRecord,
    _parse_registration,
)
from gwcore.policy.consul_values import (
    CHECK_STATUSES,
    CONFIG_KINDS,
    INTENTION_ACTIONS,
    MAX_HASH,
    MAX_WEIGHT,
    MESH,
    PROTOCOLS,
    PROXY_DEFAULTS,
    REGISTRATION,
    SERVICE_DEFAULTS,
    SERVICE_INTENTIONS,
    SKIPPED,
    TERMINATING_GATEWAY,
    TYPICAL_KINDS,
    UNKNOWN,
    WILDCARD,
)
from gwcore.policy.model import ServiceName

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
    elif kind == PROXY_DEFAULTS:
        proxy = _parse_proxy_defaults(sink, _Object(sink, where, value, weak=True))
        docs = CatalogDocuments(proxy_defaults=(proxy,))
    elif kind == MESH:
        docs = CatalogDocuments(mesh=(_parse_mesh(sink, _Object(sink, where, value, weak=True)),))
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
    ``service-intentions`` entry's service; a ``proxy-defaults`` or ``mesh`` entry's
    partition; a registered instance's (datacenter, node, service ID). Registrations
    without a service and checks never conflict.
    """
    problems: list[ShapeProblem] = []
    gateways: dict[str, GatewayEntry] = {}
    defaults: dict[ServiceName, ServiceDefaults] = {}
    intentions: dict[ServiceName, IntentionsEntry] = {}
    instances: dict[tuple[str, str, ServiceName, str], Registration] = {}
    registrations: list[Registration] = []
    skipped: list[SkippedEntry] = []
    proxies: dict[str, ProxyDefaults] = {}
    meshes: dict[str, MeshEntry] = {}

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
        for pd in part.proxy_defaults:
            if pd.partition in proxies:
                first = proxies[pd.partition]
                what = f"proxy-defaults 'global' of partition {pd.partition!r}"
                conflict(pd.origin, pd.where, what, first.origin, first.where)
            else:
                proxies[pd.partition] = pd
        for me in part.mesh:
            if me.partition in meshes:
                first = meshes[me.partition]
                what = f"mesh entry of partition {me.partition!r}"
                conflict(me.origin, me.where, what, first.origin, first.where)
            else:
                meshes[me.partition] = me
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
        proxy_defaults=tuple(proxies.values()),
        mesh=tuple(meshes.values()),
    )
    return merged, problems


__all__ = [
    "CHECK_STATUSES",
    "CONFIG_KINDS",
    "CONNECT_PROXY_KIND",
    "EMPTY_DOCUMENTS",
    "INTENTION_ACTIONS",
    "MAX_HASH",
    "MAX_WEIGHT",
    "MESH",
    "MESH_GATEWAY_KIND",
    "PROTOCOLS",
    "PROXY_DEFAULTS",
    "REGISTRATION",
    "SERVICE_DEFAULTS",
    "SERVICE_INTENTIONS",
    "SKIPPED",
    "TERMINATING_GATEWAY",
    "TERMINATING_GATEWAY_KIND",
    "TYPICAL_KINDS",
    "UNKNOWN",
    "WILDCARD",
    "CatalogDocuments",
    "CheckRecord",
    "GatewayEntry",
    "IntentionsEntry",
    "LinkedService",
    "MeshEntry",
    "ProxyDefaults",
    "Registration",
    "ServiceDefaults",
    "ServiceRecord",
    "ShapeProblem",
    "SkippedEntry",
    "best_address",
    "build_destinations",
    "build_intentions",
    "build_mesh_destinations",
    "build_mesh_gateways",
    "build_mesh_http",
    "classify",
    "decode_documents",
    "merge_documents",
    "parse_documents",
    "protocols_of",
]
