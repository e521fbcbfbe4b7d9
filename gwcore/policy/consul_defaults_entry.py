"""The ``service-defaults`` config entry: the part tgw uses, a service's ``Protocol``."""

from __future__ import annotations

from dataclasses import dataclass

from gwcore.policy.consul_decode import (
    _MISSING,
    _Object,
    _Sink,
)
from gwcore.policy.consul_values import PROTOCOLS, WILDCARD, _wildcard_problem
from gwcore.policy.destinations import EgressDestination, parse_destination
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    ServiceName,
)


@dataclass(frozen=True, slots=True)
class ServiceDefaults:
    """The part of a ``service-defaults`` entry tgw uses."""

    service: ServiceName
    protocol: str
    origin: str
    where: str
    destination: EgressDestination | None = None  # gwcore.policy.destinations


def _parse_service_defaults(sink: _Sink, doc: _Object) -> ServiceDefaults:
    # Lenient: service-defaults carries many fields tgw has no use for (Mode, Expose, ...).
    name = doc.string("Name", required=True)
    if name == WILDCARD or _wildcard_problem(name):
        doc.problem("Name", "must name one service")
    protocol = doc.string("Protocol", "tcp").lower() or "tcp"
    if protocol not in PROTOCOLS:
        doc.problem("Protocol", f"must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    service = ServiceName(
        name,
        doc.string("Namespace") or DEFAULT_NAMESPACE,
        doc.string("Partition") or DEFAULT_PARTITION,
    )
    destination = None
    if doc.raw("Destination") is not _MISSING:
        destination, found = parse_destination(doc.raw("Destination"))
        for key, message in found:
            doc.problem(f"Destination.{key}".rstrip("."), message)
    return ServiceDefaults(service, protocol, sink.origin, doc.where, destination)
