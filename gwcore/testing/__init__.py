"""Test helpers for plugin authors: fakes (``FakeSite``, ``site_config``, ``MeshCA``) from
``gwcore.testing.fakes``, the harness (builders, ``load_stack``, ``metric_value``) from
``gwcore.testing.stack``, and a Consul agent double in ``gwcore.testing.consul``."""

from gwcore.testing.fakes import TRUST_DOMAIN, FakeSite, MeshCA, site_config
from gwcore.testing.stack import (
    EVENT_HOOK_OF,
    LoadedStack,
    authorization_done,
    authz_request,
    client_connected,
    clienthello_seen,
    connection_closed,
    connection_info,
    destination,
    endpoint_choice,
    handshake_done,
    identity,
    load_stack,
    metric_value,
    routes_changed,
    site_started,
    sni_of,
    upstream_connected,
    upstream_failed,
)

__all__ = [
    "EVENT_HOOK_OF",
    "TRUST_DOMAIN",
    "FakeSite",
    "LoadedStack",
    "MeshCA",
    "authorization_done",
    "authz_request",
    "client_connected",
    "clienthello_seen",
    "connection_closed",
    "connection_info",
    "destination",
    "endpoint_choice",
    "handshake_done",
    "identity",
    "load_stack",
    "metric_value",
    "routes_changed",
    "site_config",
    "site_started",
    "sni_of",
    "upstream_connected",
    "upstream_failed",
]
