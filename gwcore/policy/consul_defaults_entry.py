"""The ``service-defaults`` and ``proxy-defaults`` config entries: the parts tgw uses, a
service's ``Protocol`` (and a destination's address), and the partition-wide default
protocol."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gwcore.policy.consul_decode import (
    _MISSING,
    _json_type,
    _Object,
    _Sink,
    weak_string,
)
from gwcore.policy.consul_values import (
    PROTOCOLS,
    PROXY_CONFIG_GLOBAL,
    WILDCARD,
    _wildcard_problem,
)
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


@dataclass(frozen=True, slots=True)
class ProxyDefaults:
    """The part of a ``proxy-defaults`` entry tgw uses: ``Config.protocol``.

    Consul keeps one such entry per admin partition, always named ``global``. Its
    ``Config`` is an opaque map; Consul reads the protocol from it with mapstructure's
    weak decoding (key matched case-insensitively, ``ComputeProtocol``) and the proxy
    lower-cases it (``ParseProxyConfig``). A value that is not HTTP-like gets Consul's
    L4 (``tcp``) listener, so an unknown one is served as ``tcp``: ``protocol`` holds
    what is served, ``declared`` what the entry says (``tgw check-config`` warns when
    they differ).
    """

    partition: str
    protocol: str
    """``""`` when the entry sets no protocol (the default, ``tcp``, applies)."""
    declared: str
    origin: str
    where: str


def _parse_proxy_defaults(sink: _Sink, doc: _Object) -> ProxyDefaults:
    # Lenient like service-defaults: MeshGateway, Expose, AccessLogs... are not read.
    name = doc.string("Name")
    if name not in ("", PROXY_CONFIG_GLOBAL):
        # Consul's ProxyConfigEntry.Normalize/Validate, word for word.
        doc.problem("Name", f'invalid name ("{name}"), only "{PROXY_CONFIG_GLOBAL}" is supported')
    declared = ""
    config = doc.raw("Config")
    if config is not _MISSING and not isinstance(config, Mapping):
        doc.problem("Config", f"must be an object, not {_json_type(config)}")
    elif isinstance(config, Mapping):
        # An opaque map (other keys belong to the proxies): only "protocol" is read,
        # matched as mapstructure matches it (the exact key first, else any case).
        key = (
            "protocol"
            if "protocol" in config
            else next((k for k in config if isinstance(k, str) and k.lower() == "protocol"), None)
        )
        value = config.get(key) if key is not None else None
        text = weak_string(value) if value is not None else ""
        if text is None:
            doc.problem(f"Config.{key}", f"must be a string, not {_json_type(value)}")
        declared = (text or "").lower()
    protocol = declared if declared in PROTOCOLS else "tcp" if declared else ""
    partition = doc.string("Partition") or DEFAULT_PARTITION
    return ProxyDefaults(partition, protocol, declared, sink.origin, doc.where)


def resolve_protocol(
    service: ServiceName,
    service_defaults: Mapping[ServiceName, ServiceDefaults],
    proxy_defaults: Mapping[str, ProxyDefaults],
) -> str:
    """A service's protocol as Consul resolves it: its ``service-defaults`` ``Protocol``,
    else the ``Config.protocol`` of its partition's ``proxy-defaults`` entry, else
    ``tcp``."""
    defaults = service_defaults.get(service)
    if defaults is not None:
        return defaults.protocol
    proxy = proxy_defaults.get(service.partition)
    return proxy.protocol if proxy is not None and proxy.protocol else "tcp"
