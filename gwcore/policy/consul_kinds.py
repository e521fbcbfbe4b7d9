"""Every config-entry kind Consul knows, and what tgw does with it: the one dispatch table.

A real config-entry directory (the output of ``consul config read`` for every entry)
holds kinds tgw has no use for. Those are **skipped**: never an error, reported by the
catalog source with one info line each and counted
(``tgw_catalog_skipped_entries{site,source,kind}``). A ``Kind`` Consul does not know is
an error (a typo must not pass silently).

Kinds are Consul's ``structs.*`` constants (``agent/structs/config_entry.go``
``MakeConfigEntry``). To start reading a kind, give it :data:`READ` here and a parser in
:func:`gwcore.policy.consul_shapes._parse_one`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

READ = "read"
SKIP = "skip"

KINDS: Mapping[str, str] = MappingProxyType(
    {
        "terminating-gateway": READ,
        "service-intentions": READ,
        "service-defaults": READ,  # Protocol and Destination are used
        "proxy-defaults": READ,  # only Config.protocol is used
        "mesh": READ,  # only HTTP (request normalisation, XFCC sanitising) is used
        # Skipped by this decoder: gwcore.policy.resolver_entry reads it (subsets and
        # settings, for terminating and mesh sites) and does not count it as skipped.
        "service-resolver": SKIP,
        "service-router": SKIP,
        "service-splitter": SKIP,
        "exported-services": SKIP,
        "sameness-group": SKIP,
        "ingress-gateway": SKIP,
        "api-gateway": SKIP,
        "bound-api-gateway": SKIP,
        "http-route": SKIP,
        "tcp-route": SKIP,
        "inline-certificate": SKIP,
        "file-system-certificate": SKIP,
        "jwt-provider": SKIP,
        "control-plane-request-limit": SKIP,
        "rate-limit-ip": SKIP,
    }
)


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """A config entry of a kind tgw does not use, left out on purpose."""

    kind: str
    name: str
    origin: str
    where: str

    def __str__(self) -> str:
        place = f" ({self.where})" if self.where else ""
        return f"{self.origin}{place}: {self.kind} {self.name!r} skipped (tgw does not use it)"


def skipped_kind(kind: object) -> bool:
    """True for a kind Consul knows that tgw skips."""
    return isinstance(kind, str) and KINDS.get(kind) == SKIP
