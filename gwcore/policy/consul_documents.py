"""What was read from Consul's documents, by kind, in the order read.

Below both the readers of each kind (which fill it) and the builders of model objects
(which read it), so neither needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from gwcore.policy.consul_defaults_entry import ProxyDefaults, ServiceDefaults
from gwcore.policy.consul_gateway_entry import GatewayEntry
from gwcore.policy.consul_intentions_entry import IntentionsEntry
from gwcore.policy.consul_kinds import SkippedEntry
from gwcore.policy.consul_mesh_entry import MeshEntry
from gwcore.policy.consul_registration import Registration


@dataclass(frozen=True, slots=True)
class CatalogDocuments:
    """Every document read, by kind, in the order read. Each piece knows its origin."""

    gateways: tuple[GatewayEntry, ...] = ()
    registrations: tuple[Registration, ...] = ()
    service_defaults: tuple[ServiceDefaults, ...] = ()
    intentions: tuple[IntentionsEntry, ...] = ()
    skipped: tuple[SkippedEntry, ...] = ()  # kinds tgw does not use (consul_kinds)
    proxy_defaults: tuple[ProxyDefaults, ...] = ()  # one per partition after a merge
    mesh: tuple[MeshEntry, ...] = ()  # one per partition after a merge


EMPTY_DOCUMENTS = CatalogDocuments()
