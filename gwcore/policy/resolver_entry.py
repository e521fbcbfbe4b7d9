"""Consul ``service-resolver`` config entries: the shape, read the way Consul reads it.

Sans-IO: decoded JSON in, :class:`ResolverEntry` and problems out; nothing raises for
bad input. tgw uses ``Subsets`` (``Filter``, ``OnlyPassing``) and ``DefaultSubset``;
the other fields (``ConnectTimeout``, ``RequestTimeout``, ``Redirect``, ``Failover``,
``LoadBalancer``, ``Meta``) are accepted and type-checked, as the calling sidecar's
discovery chain (not a gateway) decides them in Consul.

Validation follows ``ServiceResolverConfigEntry.Validate`` (agent/structs/
config_entry_discoverychain.go): ``Name`` is required; a subset name is a DNS label
(``[a-z0-9]([a-z0-9-]*[a-z0-9])?``, at most 63 characters); ``DefaultSubset`` names
one of the subsets; each ``Filter`` parses (go-bexpr, :mod:`gwcore.policy.bexpr`).
Keys match as Consul's decoder does: case-insensitively, with or without ``_``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gwcore.policy.bexpr import BexprSyntaxError, Filter
from gwcore.policy.consul_shapes import (
    CatalogDocuments,
    ShapeProblem,
    decode_documents,
    parse_documents,
)
from gwcore.policy.model import DEFAULT_NAMESPACE, DEFAULT_PARTITION, Destination, ServiceName
from gwcore.policy.resolver_settings import ResolverSettings, parse_settings

SERVICE_RESOLVER = "service-resolver"

_FIELDS = {
    "kind": str,
    "name": str,
    "namespace": str,
    "partition": str,
    "meta": dict,
    "connecttimeout": (str, int),
    "requesttimeout": (str, int),
    "defaultsubset": str,
    "subsets": dict,
    "redirect": dict,
    "failover": dict,
    "loadbalancer": dict,
    "createindex": int,
    "modifyindex": int,
    "hash": (str, int),
}
_SUBSET_FIELDS = {"filter": str, "onlypassing": (bool, str)}  # weakly typed, as Consul's
_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}
_SUBSET_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    filter: Filter
    only_passing: bool = False


@dataclass(frozen=True, slots=True)
class ResolverEntry:
    """A ``service-resolver`` entry: the subsets of ``service``."""

    service: ServiceName
    subsets: Mapping[str, Subset] = field(default_factory=dict, hash=False)
    default_subset: str = ""
    origin: str = ""
    where: str = ""
    settings: ResolverSettings = field(default_factory=ResolverSettings, compare=False)


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "a number", dict: "an object", list: "a list"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _fields(
    value: Mapping[str, Any], known: Mapping[str, Any], where: str, problems: list[tuple[str, str]]
) -> dict[str, tuple[str, Any]]:
    """Normalised key -> (original key, value); unknown or mistyped fields are problems."""
    found: dict[str, tuple[str, Any]] = {}
    for key, item in value.items():
        n = _norm(str(key))
        at = f"{where}.{key}" if where else str(key)
        if n not in known:
            problems.append((at, "unknown field"))
        elif n in found:
            problems.append((at, f"names the same field as {found[n][0]}"))
        elif item is not None and not _typed(item, known[n]):
            problems.append((at, f"must not be {_type_name(item)}"))
        elif item is not None:
            found[n] = (str(key), item)
    return found


def _typed(item: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(item, bool):  # a bool is an int in Python, not in JSON
        return bool in kinds
    return isinstance(item, kinds)


def is_resolver(value: Any) -> bool:
    """True for a JSON object whose ``Kind`` is ``service-resolver``."""
    if not isinstance(value, Mapping):
        return False
    kinds = [v for k, v in value.items() if isinstance(k, str) and _norm(k) == "kind"]
    return kinds == [SERVICE_RESOLVER]


def parse_resolver(
    value: Mapping[str, Any], origin: str, where: str = ""
) -> tuple[ResolverEntry | None, list[ShapeProblem]]:
    """One ``service-resolver`` document; ``None`` (and problems) if anything is wrong."""
    raw: list[tuple[str, str]] = []
    fields = _fields(value, _FIELDS, where, raw)

    def at(key: str) -> str:
        return f"{where}.{key}" if where else key

    name = fields.get("name", ("Name", ""))[1]
    if not name:
        raw.append((at("Name"), "is required"))
    subsets: dict[str, Subset] = {}
    for subset_name, body in fields.get("subsets", ("Subsets", {}))[1].items():
        sub_at = at(f"Subsets.{subset_name}")
        if not _SUBSET_NAME.fullmatch(subset_name) or len(subset_name) > 63:
            raw.append((sub_at, f"Subset {subset_name!r} is invalid (a DNS label: a-z, 0-9, -)"))
            continue
        if not isinstance(body, Mapping):
            raw.append((sub_at, f"must be an object, not {_type_name(body)}"))
            continue
        sub = _fields(body, _SUBSET_FIELDS, sub_at, raw)
        text = sub.get("filter", ("Filter", ""))[1]
        try:
            compiled = Filter.compile(text)
        except BexprSyntaxError as e:
            raw.append((f"{sub_at}.Filter", f"Bad Filter for subset {subset_name!r}: {e}"))
            continue
        only_passing = sub.get("onlypassing", ("OnlyPassing", False))[1]
        if isinstance(only_passing, str):
            if only_passing.lower() not in _BOOLS:
                raw.append((f"{sub_at}.OnlyPassing", f"{only_passing!r} is not a boolean"))
                continue
            only_passing = _BOOLS[only_passing.lower()]
        subsets[subset_name] = Subset(subset_name, compiled, only_passing)
    default = fields.get("defaultsubset", ("DefaultSubset", ""))[1]
    if default and default not in subsets and not any(w.startswith(at("Subsets")) for w, _ in raw):
        raw.append((at("DefaultSubset"), f"DefaultSubset {default!r} is not a valid subset"))
    settings, found = parse_settings(value, where)
    raw += found
    problems = [ShapeProblem(origin, w or "(document)", m) for w, m in raw]
    if problems:
        return None, problems
    service = ServiceName(
        name,
        fields.get("namespace", ("", ""))[1] or DEFAULT_NAMESPACE,
        fields.get("partition", ("", ""))[1] or DEFAULT_PARTITION,
    )
    entry = ResolverEntry(service, MappingProxyType(subsets), default, origin, where, settings)
    return entry, []


def decode_with_resolvers(
    origin: str, data: bytes
) -> tuple[CatalogDocuments, tuple[ResolverEntry, ...], list[ShapeProblem]]:
    """A catalog file's documents (:func:`consul_shapes.parse_documents`) and its
    ``service-resolver`` entries, which are read here; the rest is unchanged."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        docs, problems = decode_documents(origin, data)  # the same error, worded alike
        return docs, (), problems
    items = value if isinstance(value, list) else [value]
    resolvers: list[ResolverEntry] = []
    problems: list[ShapeProblem] = []
    skipped: set[str] = set()
    for i, item in enumerate(items):
        if not is_resolver(item):
            continue
        where = f"[{i}]" if isinstance(value, list) else ""
        skipped.add(f"{where}.Kind" if where else "Kind")
        entry, found = parse_resolver(item, origin, where)
        problems += found
        if entry is not None:
            resolvers.append(entry)
    docs, shape_problems = parse_documents([(origin, value)])
    # Read here, so not "skipped" (no info line, not in tgw_catalog_skipped_entries).
    docs = dataclasses.replace(
        docs, skipped=tuple(s for s in docs.skipped if s.kind != SERVICE_RESOLVER)
    )
    # consul_shapes does not read service-resolver entries (it reports their Kind): drop that.
    problems += [p for p in shape_problems if not (p.where in skipped and "Kind" in p.where)]
    return docs, tuple(resolvers), problems


def merge_resolvers(
    groups: Iterable[Iterable[ResolverEntry]],
) -> tuple[dict[ServiceName, ResolverEntry], list[ShapeProblem]]:
    """One entry per service, the first read; a later one is a problem naming both."""
    merged: dict[ServiceName, ResolverEntry] = {}
    problems: list[ShapeProblem] = []
    for group in groups:
        for entry in group:
            first = merged.setdefault(entry.service, entry)
            if first is not entry:
                problems.append(
                    ShapeProblem(
                        entry.origin,
                        entry.where or "(document)",
                        f"service-resolver {str(entry.service)!r} is already defined by "
                        f"{first.origin} {first.where}".rstrip(),
                    )
                )
    return merged, problems


def apply_settings(
    destinations: Iterable[Destination], resolvers: Mapping[ServiceName, ResolverEntry]
) -> tuple[Destination, ...]:
    """Each destination with a resolver takes its ``ConnectTimeout`` and ``LoadBalancer``
    and carries the settings ``/routes`` reports (:mod:`gwcore.policy.resolver_settings`)."""
    out = []
    for destination in destinations:
        entry = resolvers.get(destination.service)
        if entry is None:
            out.append(destination)
            continue
        s = entry.settings
        out.append(
            dataclasses.replace(
                destination,
                connect_timeout=s.connect_timeout or destination.connect_timeout,
                lb_policy=s.load_balancer.policy or destination.lb_policy,
                load_balancer=s.load_balancer,
                resolver=s.report,
            )
        )
    return tuple(out)
