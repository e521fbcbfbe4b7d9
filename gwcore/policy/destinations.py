"""Consul *destinations* (1.13+): egress targets a terminating gateway serves without
any catalog registration (sans-IO).

A ``service-defaults`` entry with ``Destination {Addresses, Port}``, linked by name in
the ``terminating-gateway`` entry, is served as one route per address at the SNI
Consul's transparent proxies send (``DestinationSNI`` in agent/connect/sni.go)::

    destination.<address, "." and ":" as "-">.<name>.<ns>.<dc>.internal.<td>
    destination.<address>.<name>.<ns>.<partition>.<dc>.internal-v1.<td>

presenting the service's leaf. An IP address is a static endpoint (Envoy's STATIC
cluster); a host name is resolved like any host-name endpoint
(:mod:`gwcore.net.hostnames`; Envoy's LOGICAL_DNS). Rules as Consul's:

- a catalog service of the same name wins (the destination is then ignored, and that
  is reported);
- L7 intentions are not supported for destinations: an intention with
  ``Permissions`` naming one is reported, and (as any L7 intention on an L4 route)
  denies;
- a wildcard link (``*``) never links a destination.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gwcore.policy.consul_decode import ShapeProblem
from gwcore.policy.model import DEFAULT_PARTITION, Destination, Endpoint, ServiceName

_HOST = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+")


@dataclass(frozen=True, slots=True)
class EgressDestination:
    """``service-defaults`` ``Destination``: where the gateway sends the traffic."""

    addresses: tuple[str, ...]
    port: int


def parse_destination(value: Any) -> tuple[EgressDestination | None, list[tuple[str, str]]]:
    """A ``Destination`` object and (key below it, message) problems, as Consul's
    ``DestinationConfig.Validate``: at least one address, each an IP or a host name,
    no duplicates, a port 1..65535."""
    problems: list[tuple[str, str]] = []
    if not isinstance(value, dict):
        return None, [("", "must be an object")]
    fields = {str(k).replace("_", "").lower(): (str(k), v) for k, v in value.items()}
    for norm, (key, _) in fields.items():
        if norm not in ("addresses", "port"):
            problems.append((key, "unknown field"))
    key, addresses = fields.get("addresses", ("Addresses", None))
    if not isinstance(addresses, list) or not addresses:
        problems.append((key, "must list at least one address"))
        addresses = []
    seen: set[str] = set()
    for i, address in enumerate(addresses):
        if not isinstance(address, str) or not (_is_ip(address) or _HOST.fullmatch(address)):
            problems.append((f"{key}[{i}]", f"{address!r} is not an IP address or a host name"))
        elif address.lower() in seen:
            problems.append((f"{key}[{i}]", f"duplicate address {address!r}"))
        else:
            seen.add(address.lower())
    key, port = fields.get("port", ("Port", None))
    if isinstance(port, str) and port.isdigit():
        port = int(port)  # weakly typed, as Consul's decoder
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append((key, "must be a port number 1..65535"))
    if problems:
        return None, problems
    return EgressDestination(tuple(addresses), port), []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def destination_sni(service: ServiceName, address: str, datacenter: str, trust_domain: str) -> str:
    """Consul's ``DestinationSNI`` for one address of a destination (lower-cased)."""
    host = address.replace(".", "-").replace(":", "-")
    if service.partition == DEFAULT_PARTITION:
        parts = ["destination", host, service.name, service.namespace, datacenter, "internal"]
    else:
        parts = ["destination", host, service.name, service.namespace, service.partition,
                 datacenter, "internal-v1"]  # fmt: skip
    return ".".join([*parts, trust_domain]).lower()


def apply_destinations(
    destinations: Iterable[Destination],
    docs: Any,
    gateway_name: str,
) -> tuple[tuple[Destination, ...], list[ShapeProblem]]:
    """Linked services without catalog instances whose ``service-defaults`` has a
    ``Destination`` become destinations (endpoints: one per address, ``egress`` set)."""
    registered = {r.service.service for r in docs.registrations if r.service is not None}
    by_service = {sd.service: sd for sd in docs.service_defaults if sd.destination is not None}
    entry = next((g for g in docs.gateways if g.name == gateway_name), None)
    named = {ls.name for ls in entry.services} if entry is not None else set()
    problems: list[ShapeProblem] = []
    out: list[Destination] = []
    for destination in destinations:
        sd = by_service.get(destination.service)
        if sd is None or destination.name not in named:
            out.append(destination)
            continue
        if destination.service in registered:
            problems.append(
                ShapeProblem(
                    sd.origin,
                    f"{sd.where}.Destination".lstrip("."),
                    f"ignored: catalog service {str(sd.service)!r} has the same name "
                    "and wins, as in Consul",
                )
            )
            out.append(destination)
            continue
        egress = sd.destination
        endpoints = tuple(
            Endpoint(a, egress.port, instance_id=f"destination:{a}") for a in egress.addresses
        )
        out.append(dataclasses.replace(destination, endpoints=endpoints, egress=egress.addresses))
    for entry_ in docs.intentions:
        for intention in entry_.intentions:
            if intention.permissions and intention.destination in {
                d.service for d in out if d.egress
            }:
                problems.append(
                    ShapeProblem(
                        entry_.origin,
                        entry_.where or "(document)",
                        f"L7 intention {intention} names a destination: L7 intentions "
                        "are not supported for destinations, so every connection it "
                        "matches is denied (the entry is in force)",
                        in_force=True,
                    )
                )
    return tuple(out), problems
