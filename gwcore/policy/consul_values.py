"""The names and bounds Consul's documents use: kinds, protocols, check statuses, weights.

A leaf module, so every reader of one kind of document can share them without importing
the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

TERMINATING_GATEWAY = "terminating-gateway"
SERVICE_INTENTIONS = "service-intentions"
SERVICE_DEFAULTS = "service-defaults"
PROXY_DEFAULTS = "proxy-defaults"
MESH = "mesh"
REGISTRATION = "registration"
UNKNOWN = "unknown"
SKIPPED = "skipped"
CONFIG_KINDS = (TERMINATING_GATEWAY, SERVICE_INTENTIONS, SERVICE_DEFAULTS, PROXY_DEFAULTS, MESH)

WILDCARD = "*"
PROTOCOLS = ("tcp", "http", "http2", "grpc")
PROXY_CONFIG_GLOBAL = "global"  # the one name a proxy-defaults entry may have
MESH_CONFIG_NAME = "mesh"  # the one name a mesh entry may have
CHECK_STATUSES = ("passing", "warning", "critical", "maintenance")
INTENTION_ACTIONS = ("allow", "deny")
MAX_WEIGHT = 128
MAX_HASH = 2**64 - 1  # Consul's Hash is a uint64
TYPICAL_KINDS = ("", "typical")

_EMPTY_META: Mapping[str, str] = MappingProxyType({})


def _wildcard_problem(value: str) -> str | None:
    if WILDCARD in value and value != WILDCARD:
        return f"{value!r} is a partial wildcard; use '*' alone or an exact name"
    return None
