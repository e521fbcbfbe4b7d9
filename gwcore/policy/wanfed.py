"""WAN federation through mesh gateways: routing Consul servers' SNIs (sans-IO).

With ``connect.enable_mesh_gateway_wan_federation``, Consul servers dial each other's
RPC port through mesh gateways registered with ``Meta {consul-wan-federation = "1"}``
(agent/xds/listeners.go and clusters.go, ``ServerSNIFn``), using server names of the
agent's DNS ``domain`` (``consul``), not of the mesh trust domain:

- ``server.<dc>.consul`` and ``<anything>.server.<dc>.consul`` of *another* datacenter
  go to that datacenter's mesh gateways;
- ``server.<own dc>.consul`` goes to any of this datacenter's servers (the catalog's
  ``consul`` service instances, at their LAN address and port);
- ``<node>.server.<own dc>.consul`` (and ``*.<node>.server.<own dc>.consul``) goes to
  the server on that node; an unknown node has no route.

A mesh site routes these only when ``[sites.NAME.mesh_hop] wan_federation = true`` (the
counterpart of the ``consul-wan-federation`` meta); otherwise they are not service names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from gwcore.policy.consul_shapes import CatalogDocuments, best_address
from gwcore.policy.model import Destination, Endpoint, ServiceName

CONSUL_SERVICE = ServiceName("consul")
"""Consul's servers register themselves as this service; it is never a mesh service."""

DOMAIN = "consul"


@dataclass(frozen=True, slots=True)
class ServerName:
    datacenter: str
    node: str | None  # None: any server of the datacenter


def parse_server_sni(sni: str, domain: str = DOMAIN) -> ServerName | None:
    """``[<labels>.]server.<dc>.<domain>``; the label just before ``server`` is the node."""
    labels = sni.split(".")
    if len(labels) < 3 or labels[-1] != domain or labels[-3] != "server":
        return None
    if any(not label for label in labels):
        return None
    node = labels[-4] if len(labels) >= 4 else None
    return ServerName(labels[-2], node)


def build_consul_servers(docs: CatalogDocuments, datacenter: str) -> Destination | None:
    """This datacenter's Consul servers (``consul`` instances), at BestAddress(wan=false)."""
    endpoints = []
    for reg in docs.registrations:
        svc = reg.service
        if svc is None or svc.service != CONSUL_SERVICE or svc.port == 0:
            continue
        if reg.datacenter and reg.datacenter != datacenter:
            continue
        address, port = best_address(reg, svc, wan=False)
        endpoints.append(Endpoint(address, port, instance_id=svc.instance_id, node=reg.node))
    if not endpoints:
        return None
    endpoints.sort(key=lambda e: (e.node, e.instance_id))
    return Destination(CONSUL_SERVICE, datacenter, tuple(endpoints))


def server_target(
    name: ServerName,
    datacenter: str,
    servers: Destination | None,
    mesh_gateways: Mapping[str, tuple[Endpoint, ...]],
) -> tuple[Destination | None, bool, str]:
    """(where to send, through mesh gateways?, the no-route reason when nowhere)."""
    if name.datacenter != datacenter:
        gateways = mesh_gateways.get(name.datacenter)
        if not gateways:
            return None, True, "unknown_datacenter"
        return Destination(CONSUL_SERVICE, name.datacenter, gateways), True, ""
    if servers is None:
        return None, False, "unknown_server"
    if name.node is None:
        return servers, False, ""
    chosen = tuple(e for e in servers.endpoints if e.node.lower() == name.node)
    if not chosen:
        return None, False, "unknown_server"
    return replace(servers, endpoints=chosen), False, ""
