"""``service-resolver`` entries read from Consul (``/v1/config/service-resolver``) for
the ``consul_catalog`` source: subsets and settings applied to its destinations.

Consul validates an entry when it is written, so a rejected one is rare (an entry of a
newer Consul, a filter tgw's go-bexpr reader does not know): it is reported once and
that service's last good entry stays in force, as a file catalog keeps a file's last
good content. An entry deleted in Consul is dropped with the next answer (Consul's
``deleted-resolver`` case: the subset routes go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gwcore.policy.consul_shapes import CatalogDocuments, ShapeProblem
from gwcore.policy.model import Destination, ServiceName
from gwcore.policy.resolver_entry import ResolverEntry, apply_settings, parse_resolver
from gwcore.policy.subsets import apply_subsets

ORIGIN = "consul:config/service-resolver"


class ConsulResolvers:
    """The resolvers in force, by service; :attr:`loaded` once Consul answered."""

    def __init__(self) -> None:
        self.loaded = False
        self._entries: dict[ServiceName, ResolverEntry] = {}

    @property
    def entries(self) -> Mapping[ServiceName, ResolverEntry]:
        return self._entries

    def update(self, answer: Iterable[Any]) -> list[ShapeProblem]:
        """Take Consul's answer; returns the problems of entries that were not taken."""
        problems: list[ShapeProblem] = []
        entries: dict[ServiceName, ResolverEntry] = {}
        for i, item in enumerate(answer):
            if not isinstance(item, Mapping):
                problems.append(ShapeProblem(ORIGIN, f"[{i}]", "must be an object"))
                continue
            entry, found = parse_resolver(item, ORIGIN, f"[{i}]")
            if entry is not None:
                entries[entry.service] = entry
                continue
            problems += found
            name = item.get("Name") if isinstance(item.get("Name"), str) else ""
            kept = next((e for s, e in self._entries.items() if s.name == name), None)
            if kept is not None:
                entries[kept.service] = kept
        self._entries = entries
        self.loaded = True
        return problems

    def apply(
        self, destinations: Iterable[Destination], docs: CatalogDocuments, datacenter: str
    ) -> tuple[tuple[Destination, ...], list[ShapeProblem]]:
        with_subsets, problems = apply_subsets(destinations, docs, self._entries, datacenter)
        return apply_settings(with_subsets, self._entries), problems
