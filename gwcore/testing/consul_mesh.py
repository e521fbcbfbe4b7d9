"""The Consul double's gateway and multi-datacenter endpoints: what a mesh gateway reads.

Mixed into :class:`~gwcore.testing.consul.ConsulDouble`. Consul's own mesh gateway
(``agent/proxycfg/mesh_gateway.go``) watches the service list of its datacenter, then
``/v1/health/connect/<svc>`` for each service, ``/v1/catalog/datacenters``, and in every
other datacenter the mesh gateways (``?dc=``); with WAN federation also the federation
states' mesh gateways. The double serves those the way Consul's state store answers:

- ``GET /v1/catalog/gateway-services/:gw`` from the ``terminating-gateway`` entry (see
  the module docstring of :mod:`gwcore.testing.consul`);
- ``GET /v1/health/connect/:svc`` (``CheckConnectServiceNodes``): the service's
  Connect-native instances, its sidecar proxies (``Kind: "connect-proxy"`` with
  ``Proxy.DestinationServiceName``), and *appended* the instances of every terminating
  gateway whose entry links the service (wildcards included). Its index is the highest
  of the indexes of every service in the answer, of the service itself, of the
  ``terminating-gateway`` entries and of the last extinction of a service, so any change
  of the answer, a removal included, moves it;
- ``?dc=<other>`` on any endpoint: answered by that datacenter's double when the doubles
  were joined with :func:`federate` (as an agent forwards to a remote server over the
  WAN), else a 500 as before;
- ``GET /v1/catalog/datacenters``: the federated datacenters, own first, no index (Consul
  serves it from memberlist, not as a blocking query);
- ``GET /v1/internal/federation-states/mesh-gateways``: ``{dc: [CheckServiceNode]}`` of
  every federated datacenter that has mesh gateways (``FederationState.ListMeshGateways``:
  each datacenter's ``ServiceDump`` of kind ``mesh-gateway``), blocking on an index that
  moves when any datacenter's list changes.
"""

from __future__ import annotations

import json
from typing import Any

from gwcore.testing.consul_http import _HTTPError
from gwcore.testing.consul_state import DEFAULT, CatalogStore, Indexes

TYPICAL = ("", "typical")
MESH_GATEWAY = "mesh-gateway"


def federate(*doubles: Any) -> None:
    """Join the doubles' datacenters (WAN federation): ``?dc=`` reaches each of them."""
    joined = {d.datacenter: d for d in doubles}
    for double in doubles:
        double.federation = joined


class _MeshEndpoints:
    """Mixed into ConsulDouble, whose ``store``, ``services``, ``indexes``, ``datacenter``
    and ``federation`` it uses."""

    store: CatalogStore
    services: dict[tuple[str, str], dict[str, Any]]
    indexes: Indexes
    datacenter: str
    federation: dict[str, Any]
    _fedstate_seen: str = ""
    _connect_names: dict[str, set[str]]
    requests: list[Any]

    # --- gateway-services ------------------------------------------------------

    def _connect_capable(self) -> set[str]:
        capable = set()
        for svc in self.services.values():
            connect = svc.get("Connect") or {}
            if connect.get("Native") or connect.get("SidecarService"):
                capable.add(svc["Service"])
            if svc["Kind"] == "connect-proxy":
                capable.add((svc.get("Proxy") or {}).get("DestinationServiceName", ""))
        return capable

    def _gateway_services(self, gateway: str, *scope: str) -> list[dict[str, Any]]:
        entry = self.store.entry("terminating-gateway", gateway, *scope)
        if entry is None:
            return []
        out: dict[str, dict[str, Any]] = {}
        wildcard = None
        for linked in entry.get("Services") or []:
            if linked["Name"] == "*":
                wildcard = linked
                continue
            out[linked["Name"]] = self._gateway_service(gateway, linked, entry, False)
        if wildcard is not None:
            capable = self._connect_capable()
            plain = {s["Service"] for s in self.services.values() if s["Kind"] in TYPICAL}
            for name in sorted(plain - capable):
                if name not in out:
                    out[name] = self._gateway_service(
                        gateway, {**wildcard, "Name": name}, entry, True
                    )
        return [out[name] for name in sorted(out)]

    def _gateway_service(
        self, gateway: str, linked: dict[str, Any], entry: dict[str, Any], wildcard: bool
    ) -> dict[str, Any]:
        # Enterprise: Namespace/Partition appear when the entry or the link names them.
        scope = {k: entry[k] for k in ("Namespace", "Partition") if entry.get(k)}
        service = {"Name": linked["Name"], **scope}
        if linked.get("Namespace"):
            service["Namespace"] = linked["Namespace"]
        item: dict[str, Any] = {
            "Gateway": {"Name": gateway, **scope},
            "Service": service,
            "GatewayKind": "terminating-gateway",
        }
        for key in ("CAFile", "CertFile", "KeyFile", "SNI"):
            if linked.get(key):
                item[key] = linked[key]
        if wildcard:
            item["FromWildcard"] = True
        # Consul's gatewayServiceKind: a catalog service, else a service-defaults
        # Destination (1.13+); tgw reads "service" for an unregistered one either way.
        defaults = self.store.entry("service-defaults", linked["Name"]) or {}
        registered = any(s["Service"] == linked["Name"] for s in self.services.values())
        destination = not registered and bool(defaults.get("Destination"))
        item["ServiceKind"] = "destination" if destination else "service"
        item["CreateIndex"] = entry["CreateIndex"]
        item["ModifyIndex"] = entry["ModifyIndex"]
        return item

    # --- health/connect ----------------------------------------------------------

    def _linking_gateways(self, service: str) -> list[str]:
        """Terminating gateways whose entry links ``service`` (default namespace)."""
        return [
            entry["Name"]
            for entry in self.store.entries("terminating-gateway")
            if any(
                item["Service"]["Name"] == service for item in self._gateway_services(entry["Name"])
            )
        ]

    def health_connect(
        self, service: str, passing: bool, namespace: str = DEFAULT, partition: str = DEFAULT
    ) -> list[dict[str, Any]]:
        """``GET /v1/health/connect/<service>``: what a caller (or a mesh gateway) dials."""
        answer = []
        for name in sorted({s["Service"] for s in self.services.values()}):
            for node in self.store.health_service(name, passing, namespace, partition):
                record = self.services.get((node["Node"]["Node"], node["Service"]["ID"])) or {}
                if record.get("Kind") == "connect-proxy":
                    proxy = record.get("Proxy") or {}
                    if proxy.get("DestinationServiceName") == service:
                        answer.append(node | {"Service": node["Service"] | {"Proxy": proxy}})
                elif name == service and (record.get("Connect") or {}).get("Native"):
                    answer.append(node)
        for gateway in sorted(self._linking_gateways(service)):
            answer += self.store.health_service(gateway, passing, namespace, partition)
        return answer

    def connect_index(self, service: str) -> int:
        """The index ``/v1/health/connect/<service>`` answers with: the highest index of
        every service that ever appeared in its answer (so a removal moves it), of the
        service itself and of the ``terminating-gateway`` entries; for an empty answer
        also the last extinction of a service (``catalog.go``'s rule for a service that
        does not exist)."""
        answer = self.health_connect(service, False)
        names = self._connect_names.setdefault(service, {service})
        names.update(n["Service"]["Service"] for n in answer)
        keys = [f"service.{n}" for n in sorted(names)]
        keys += ["config:terminating-gateway"] + ([] if answer else ["service_last_extinction"])
        return self.indexes.get(*keys)

    # --- several datacenters -----------------------------------------------------

    def datacenters(self) -> list[str]:
        """``GET /v1/catalog/datacenters``: own first (nearest), then by name."""
        others = sorted(dc for dc in self.federation if dc != self.datacenter)
        return [self.datacenter, *others]

    def mesh_gateways_by_dc(self) -> dict[str, list[dict[str, Any]]]:
        """``GET /v1/internal/federation-states/mesh-gateways``."""
        doubles = self.federation or {self.datacenter: self}
        out = {}
        for dc, double in sorted(doubles.items()):
            gateways = [
                node
                for name in sorted(
                    {s["Service"] for s in double.services.values() if s["Kind"] == MESH_GATEWAY}
                )
                for node in double.store.health_service(name, False)
            ]
            if gateways:
                out[dc] = gateways
        return out

    def fedstate_index(self) -> int:
        """Moves (one write of this datacenter) whenever the answer above changed."""
        seen = json.dumps(
            {
                dc: [(n["Node"], n["Service"], n["Checks"]) for n in nodes]
                for dc, nodes in self.mesh_gateways_by_dc().items()
            },
            sort_keys=True,
            default=str,
        )
        if seen != self._fedstate_seen:
            self._fedstate_seen = seen
            self.indexes.touch(self.indexes.next(), "federation-states")
        return self.indexes.get("federation-states")

    def _remote(self, other: Any, request: Any, method: str, path: str, args: dict) -> Any:
        """A request for another datacenter, answered by its double (or a 500 when its
        servers are down or failing, as an agent whose WAN RPC fails answers)."""
        failing = any(path.startswith(f.prefix) and f.remaining != 0 for f in other._faults)
        if other.port is None or failing:
            request.setResponseCode(500)
            return f"rpc error: No path to datacenter {other.datacenter!r}".encode()
        token = self.requests[-1].token if self.requests else None  # set by _handle
        refused = other.acl_token is not None and token != other.acl_token
        if refused or any(path.startswith(p) for p in other._denied):
            request.setResponseCode(403)  # the remote servers check the same token
            return b"Permission denied"
        try:
            return other._route(request, method, path, args)
        except _HTTPError as e:
            request.setResponseCode(e.status)
            return e.text.encode()

    def wake_federation(self) -> None:
        """A write here may change what the other datacenters' doubles answer."""
        for double in self.federation.values():
            if double is not self:
                double.reactor.callLater(0, double._wake)
