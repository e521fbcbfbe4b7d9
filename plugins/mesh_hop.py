"""Essential plugin: the mesh-gateway hop, for destinations in another datacenter.

A destination whose datacenter differs from the site's (the catalog says so: see
:func:`gwcore.policy.consul_shapes.build_destinations`) is never dialled directly.
After the site authorized the client as usual, this strategy opens a new mTLS
session **as the gateway itself** — the leaf its certificate providers hold for the
service named like the gateway (``spiffe://<td>/ns/default/dc/<dc>/svc/<name>``,
which is what Consul issues a terminating gateway) — with the remote service SNI
``<svc>.<ns>.<dc2>.internal.<td>``, to a mesh gateway:

- ``mode = "local"``: this datacenter's mesh gateways, which forward to the
  destination datacenter's;
- ``mode = "remote"``: the destination datacenter's mesh gateways directly;
- ``mode = "none"`` (default, as Consul's ``MeshGatewayModeNone``): no mesh gateway.
  The hop does not apply; the site's other upstream strategies (TLS origination,
  plain TCP) dial the destination's own instances directly, at their WAN address
  (Consul's ``BestAddress(wan=true)``: they are in another datacenter).

The mode is per site (``mode``) and per destination (``[sites.NAME.mesh_hop.destinations]``,
service name to mode), the destination's entry winning, as a Consul upstream's
``MeshGateway.Mode`` wins over the proxy's defaults.

The far end must present the destination's identity
``spiffe://<td>/ns/<ns>/dc/<dc2>/svc/<svc>`` (an exact URI SAN match, after the
chain verified against the site's trust roots); anything else is refused and
counted as ``wrong_identity``. The remote terminating gateway then authorizes *this
gateway's* identity with its own intentions.

Being essential (registered before the other upstream strategies) makes the hop
fail closed in ``local`` and ``remote`` mode: without a mesh gateway for the
destination the connection is refused, never sent straight to the remote instances.

Section ``[sites.NAME.mesh_hop]`` (optional)::

    mode = "local"                             # "none" (default), "local" or "remote"
    [sites.NAME.mesh_hop.destinations]         # per destination service, over ``mode``
    billing = "remote"
    [sites.NAME.mesh_hop.gateways]             # mesh gateways per datacenter, used
    dc2 = ["203.0.113.7:8443"]                 # where the catalog has none for it

The configured gateways are published as a catalog source of their own, after the
stack's catalogs, so a datacenter the catalog knows keeps the catalog's gateways.
A mesh site (``role = "mesh"``) uses them too, to reach other datacenters.

Metric: ``tgw_mesh_hop_failures_total{site,datacenter,reason}`` (reasons:
``wrong_identity``, ``no_mesh_gateway``, ``no_leaf`` and the ``tls_*`` reasons of TLS
origination).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from prometheus_client import Counter
from twisted.internet.defer import Deferred

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import CatalogSource, SiteContext, SourceHealth, UpstreamStrategy
from gwcore.net.tls import roots_digest
from gwcore.net.upstream import UpstreamConnectError
from gwcore.net.upstream_tls import (
    TLSUpstreamProtocol,
    Verification,
    connect_tls,
    mesh_client_context,
)
from gwcore.policy.config import ConfigProblem, SectionReader, SiteConfig
from gwcore.policy.model import CatalogSnapshot, Destination, Endpoint, MeshGateways
from gwcore.policy.sni import service_sni
from gwcore.policy.spiffe import service_spiffe_id

NAME = "mesh_hop"
MODES = ("none", "local", "remote")
DEFAULT_MODE = "none"  # Consul's default: an upstream uses no mesh gateway unless told


@dataclass(frozen=True, slots=True)
class Settings:
    mode: str = DEFAULT_MODE
    gateways: tuple[MeshGateways, ...] = field(default_factory=tuple)
    destinations: Mapping[str, str] = field(default_factory=dict)  # service -> mode
    wan_federation: bool = False  # mesh sites: route Consul servers' names

    def mode_for(self, destination: Destination) -> str:
        """The destination's own mode if configured, else the site's. Keys are services as
        tgw names them: ``name``, or ``partition/namespace/name`` outside the defaults."""
        return self.destinations.get(str(destination.service), self.mode)


def parse_address(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` into (host, port); ``None`` if it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets
    return host, int(port)


def read_settings(site: SiteConfig) -> tuple[Settings, list[ConfigProblem]]:
    r = site.reader(NAME)
    for key in ("mode", "destinations"):
        if site.role == "mesh" and key in r.table:
            r.problem(key, "applies to terminating sites (a mesh site forwards, it never hops)")
    mode = r.string("mode", DEFAULT_MODE, choices=MODES) or DEFAULT_MODE
    wan_federation = bool(r.boolean("wan_federation", False))
    if site.role != "mesh" and "wan_federation" in r.table:
        r.problem("wan_federation", "applies to mesh sites (WAN federation through mesh gateways)")
    per_destination: dict[str, str] = {}
    modes = r.table_value("destinations")
    dr = SectionReader(site.file, f"{r.prefix}.destinations", modes)
    for service in sorted(modes):
        chosen = dr.string(service, required=True, choices=MODES)
        if chosen:
            per_destination[service] = chosen
    r.problems += dr.problems
    gateways: list[MeshGateways] = []
    table = r.table_value("gateways")
    for dc in sorted(table):
        sr = SectionReader(site.file, f"{r.prefix}.gateways", table)
        endpoints = []
        for text in sr.strings(dc, required=True):
            address = parse_address(text)
            if address is None:
                sr.problem(dc, f"{text!r} is not host:port (IPv6: [addr]:port)")
                continue
            endpoints.append(Endpoint(address[0], address[1], instance_id=f"config:{text}"))
        r.problems += sr.problems
        if endpoints:
            gateways.append(MeshGateways(dc, tuple(endpoints)))
    return Settings(mode, tuple(gateways), per_destination, wan_federation), r.finish()


class ConfiguredMeshGateways:
    """A catalog source holding only the ``gateways`` of the section."""

    name = NAME

    def __init__(self, site: SiteContext, gateways: tuple[MeshGateways, ...]) -> None:
        self._site = site
        self._gateways = gateways
        self._last_success: float | None = None

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> None:
        version = hashlib.sha256(repr(self._gateways).encode()).hexdigest()[:16]
        publish(CatalogSnapshot(source=NAME, mesh_gateways=self._gateways, version=version))
        self._last_success = self._site.reactor.seconds()

    def stop(self) -> None:
        return None

    def health(self) -> SourceHealth:
        return SourceHealth(self._last_success, None)


class MeshHopStrategy:
    """The ``mesh_hop`` upstream strategy (see the module docstring)."""

    name = NAME

    def __init__(self, site: SiteContext, settings: Settings) -> None:
        self.site = site
        self.settings = settings
        self._context: tuple[bytes, SSL.Context] | None = None
        self.failures = site.metrics.family(
            Counter,
            "tgw_mesh_hop_failures",
            "Mesh-gateway hops that failed, by destination datacenter and reason "
            "(wrong_identity, no_mesh_gateway, no_leaf, tls_untrusted, tls_handshake, ...).",
            ["site", "datacenter", "reason"],
        )

    def applies_to(self, destination: Destination) -> bool:
        """Another datacenter's destination, unless its mode is ``none`` (dialled directly)."""
        if destination.datacenter == self.site.config.datacenter:
            return False
        return self.settings.mode_for(destination) != "none"

    def endpoints_for(self, destination: Destination) -> Sequence[Endpoint]:
        """The mesh gateways to dial: this datacenter's (local mode) or the destination's."""
        mode = self.settings.mode_for(destination)
        local = mode == "local"
        datacenter = self.site.config.datacenter if local else destination.datacenter
        gateways = self.site.catalog_view().mesh_gateways.get(datacenter, ())
        if not gateways:
            self.failures.labels(
                site=self.site.name, datacenter=destination.datacenter, reason="no_mesh_gateway"
            ).inc()
            self.site.log.warn(
                "no mesh gateway known in {dc} ({mode} mode) for {service} in {far}: refusing "
                "rather than dialling another datacenter directly",
                dc=datacenter,
                mode=mode,
                service=str(destination.service),
                far=destination.datacenter,
            )
        return gateways

    def connect(
        self, destination: Destination, endpoint: Endpoint, factory: Any, timeout: float
    ) -> Deferred[TLSUpstreamProtocol]:
        return Deferred.fromCoroutine(self._connect(destination, endpoint, timeout))

    def _client_context(self) -> SSL.Context:
        leaf = self.site.gateway_leaf()
        if leaf is None:
            raise UpstreamConnectError(
                "no_leaf",
                f"no leaf for the gateway's own identity {self.site.config.name!r}: the "
                "certificate provider must supply one for the mesh-gateway hop",
            )
        # Mesh gateways carry identities of the site's own trust domain: only its
        # bundle may vouch for them, never a peer's (issue 16).
        roots = list(self.site.trust_bundles().get(self.site.config.trust_domain, ()))
        key = leaf.fingerprint + roots_digest(roots)
        if self._context is None or self._context[0] != key:
            self._context = (key, mesh_client_context(leaf, roots))
        return self._context[1]

    async def _connect(
        self, destination: Destination, endpoint: Endpoint, timeout: float
    ) -> TLSUpstreamProtocol:
        config = self.site.config
        dc = destination.datacenter
        try:
            context = self._client_context()
        except (UpstreamConnectError, SSL.Error, ValueError) as e:
            self.failures.labels(site=self.site.name, datacenter=dc, reason="no_leaf").inc()
            if isinstance(e, UpstreamConnectError):
                raise
            raise UpstreamConnectError("no_leaf", f"the gateway's own leaf is unusable: {e}") from e
        sni = service_sni(destination.service, dc, config.trust_domain)
        expect = service_spiffe_id(destination.service, dc, config.trust_domain).uri
        try:
            return await connect_tls(
                self.site.reactor,
                endpoint,
                timeout,
                lambda: TLSUpstreamProtocol(context, sni, Verification(expect)),
            )
        except UpstreamConnectError as e:
            wrong = e.reason == "tls_san_mismatch"
            reason = "wrong_identity" if wrong else e.reason
            self.failures.labels(site=self.site.name, datacenter=dc, reason=reason).inc()
            if wrong:
                self.site.log.warn(
                    "mesh-gateway hop to {service} in {dc} via {endpoint} refused: the far end "
                    "is not {expect}: {detail}",
                    service=str(destination.service),
                    dc=dc,
                    endpoint=str(endpoint),
                    expect=expect,
                    detail=e.detail,
                )
            raise


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    return read_settings(site)[1]


@hookimpl
def tgw_catalog_sources(site: SiteContext) -> Sequence[CatalogSource]:
    settings, _ = read_settings(site.config)
    if not settings.gateways:
        return []
    return [ConfiguredMeshGateways(site, settings.gateways)]


@hookimpl
def tgw_upstream_strategies(site: SiteContext) -> Sequence[UpstreamStrategy]:
    if site.config.role == "mesh":
        return []  # a mesh site forwards bytes untouched; it never originates TLS
    settings, _ = read_settings(site.config)
    return [MeshHopStrategy(site, settings)]
