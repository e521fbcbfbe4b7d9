"""The ``terminating-gateway`` config entry: which services a gateway links, with TLS options.

Read as :mod:`gwcore.policy.consul_shapes` describes (field matching, unknown fields are
errors, wildcards).
"""

from __future__ import annotations

from dataclasses import dataclass

from gwcore.policy.consul_decode import (
    _Object,
    _Sink,
)
from gwcore.policy.consul_values import MAX_HASH, WILDCARD
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    UpstreamTLS,
)

_GATEWAY_FIELDS = (
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Meta",
    "Services",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
)
_LINKED_SERVICE_FIELDS = (
    "Name",
    "Namespace",
    "Partition",
    "CAFile",
    "CertFile",
    "KeyFile",
    "SNI",
    "DisableAutoHostRewrite",
)


@dataclass(frozen=True, slots=True)
class LinkedService:
    """One ``Services[]`` item of a ``terminating-gateway`` entry (``name`` may be ``*``)."""

    name: str
    namespace: str  # "" means the entry's namespace
    tls: UpstreamTLS
    where: str


@dataclass(frozen=True, slots=True)
class GatewayEntry:
    """A ``terminating-gateway`` config entry."""

    name: str
    namespace: str
    partition: str
    services: tuple[LinkedService, ...]
    origin: str
    where: str


def _parse_gateway(sink: _Sink, doc: _Object) -> GatewayEntry:
    doc.string("Kind")
    name = doc.string("Name", required=True)
    namespace = doc.string("Namespace")
    partition = doc.string("Partition")
    doc.string_map("Meta")
    for counter in ("CreateIndex", "ModifyIndex"):
        doc.integer(counter, 0)
    doc.integer("Hash", 0, minimum=0, maximum=MAX_HASH)
    services: list[LinkedService] = []
    seen: dict[tuple[str, str], str] = {}
    for svc in doc.children("Services", _LINKED_SERVICE_FIELDS):
        svc_name = svc.string("Name", required=True)
        svc_ns = svc.string("Namespace")
        svc_partition = svc.string("Partition")
        if svc_partition and svc_partition != (partition or DEFAULT_PARTITION):
            svc.problem(
                "Partition", "a terminating gateway cannot link another partition's service"
            )
        if svc_ns == WILDCARD:
            svc.problem(
                "Namespace", "Wildcard namespace is not supported for terminating gateway services"
            )
        tls = UpstreamTLS(
            ca_file=svc.string("CAFile"),
            cert_file=svc.string("CertFile"),
            key_file=svc.string("KeyFile"),
            sni=svc.string("SNI"),
        )
        svc.boolean("DisableAutoHostRewrite")
        if (tls.cert_file or tls.key_file) and not (tls.ca_file and tls.cert_file and tls.key_file):
            svc.problem(
                "CertFile" if tls.cert_file else "KeyFile",
                "must have a CertFile, CAFile, and KeyFile specified for TLS origination",
            )
        svc.finish()
        key = (svc_ns or namespace or DEFAULT_NAMESPACE, svc_name)
        if svc_name and key in seen:
            svc.problem(
                "Name",
                f"Service {svc_name!r} was specified more than once within a namespace "
                f"(also at {seen[key]})",
            )
        seen.setdefault(key, svc.where)
        services.append(LinkedService(svc_name, svc_ns, tls, svc.where))
    doc.finish()
    return GatewayEntry(name, namespace, partition, tuple(services), sink.origin, doc.where)
