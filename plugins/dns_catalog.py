"""The ``dns_catalog`` built-in plugin: destinations whose endpoints come from DNS.

Section ``[sites.NAME.dns_catalog]`` (all optional):

- ``nameservers``: ``"ip"``, ``"ip:port"`` or ``"[ipv6]:port"`` strings, tried in order
  (default: the system's, from ``/etc/resolv.conf``). For Consul's DNS interface, the
  agent's DNS port: ``["127.0.0.1:8600"]``;
- ``min_ttl`` (default ``1s``, at least ``0.05s``) and ``max_ttl`` (default ``5m``): a
  record's TTL is clamped to these before it sets the next lookup;
- ``max_stale`` (default ``1h``): how long past its TTL the last good answer is served
  while no authority answers (timeouts, SERVFAIL, REFUSED; RFC 8767);
- ``hold_nx`` (default ``30s``): how long the last good answer is kept after an
  authoritative negative answer (NXDOMAIN, NODATA, SRV targets all ".") before the
  endpoints are removed (HAProxy's ``hold nx``);
- ``timeout`` (default ``5s``): one lookup, every query and CNAME step included;
- ``edns_payload`` (default ``4096``; ``0`` sends no OPT record): the EDNS0 UDP
  payload size queries advertise;
- ``search`` and ``ndots`` (default: ``/etc/resolv.conf``'s): the search list for
  names with fewer than ``ndots`` dots;
- ``family`` (default ``"prefer_ipv4"``): ``ipv4``, ``ipv6``, ``both``, ``prefer_ipv4`` or
  ``prefer_ipv6`` (see :class:`gwcore.policy.dns_records.Family`).

One table per destination, ``[sites.NAME.dns_catalog.services.<service>]``, with
exactly one of

- ``srv = "_ldap._tcp.example.test"`` (or a Consul DNS name such as
  ``"billing.service.dc1.consul"``): endpoints are the SRV targets' addresses with the
  records' ports, priorities and weights;
- ``hostname = "db.example.test"`` and ``port``: every address is an endpoint;

and optionally ``namespace`` (default ``"default"``), ``protocol`` (``tcp``, ``http``,
``http2``, ``grpc``; default ``tcp``), ``family`` (overrides the section's), and the
upstream TLS fields of a Consul linked service: ``ca_file``, ``cert_file``, ``key_file``
(relative to the config file) and ``sni``. As in Consul, ``ca_file`` turns TLS on.

The destination is routed under the Consul SNI of its service name, like any other.
Refresh and serve-stale rules are :class:`gwcore.policy.dns_records.ServeStale`'s:
a destination whose lookups fail keeps its last good endpoints for ``max_stale``,
counted in ``tgw_dns_stale_served_total``; after that it stays routed with zero
endpoints (connections are refused with "no healthy endpoints") and one error is
logged. A negative answer keeps them ``hold_nx`` only (``tgw_dns_held``). A
destination that never resolved is routed with zero endpoints. The source
never says anything about intentions.
"""

from __future__ import annotations

import hashlib
import math
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from twisted.internet.defer import Deferred, DeferredList

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.metrics import SERVICE_LABELS, service_labels
from gwcore.contract.providers import SourceHealth
from gwcore.net.resolver import (
    AddressAnswer,
    DNSResolver,
    DNSWatch,
    ServiceAnswer,
    WatchUpdate,
)
from gwcore.policy.config import ConfigProblem, SectionReader, SiteConfig, read_stub_options
from gwcore.policy.dns_records import (
    DEFAULT_HOLD_NX,
    FAMILIES,
    Family,
    RefreshPolicy,
    Status,
    host_endpoints,
    is_ip_literal,
    parse_nameserver,
    srv_endpoints,
    valid_hostname,
)
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    CatalogSnapshot,
    Destination,
    Endpoint,
    ServiceName,
    UpstreamTLS,
)
from gwcore.policy.resolv import DEFAULT_EDNS_PAYLOAD

if TYPE_CHECKING:
    from gwcore.contract.providers import CatalogSource, SiteContext

NAME = "dns_catalog"
MODULE = "gwcore.plugins.dns_catalog"
PROTOCOLS = ("tcp", "http", "http2", "grpc")
DEFAULT_MIN_TTL = 1.0
DEFAULT_MAX_TTL = 300.0
DEFAULT_MAX_STALE = 3600.0
DEFAULT_TIMEOUT = 5.0
MIN_TTL_FLOOR = 0.05
DEFAULT_FAMILY = Family.PREFER_IPV4

_SERVICE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class DNSService:
    """One destination of the section: what to look up and how to reach it."""

    service: ServiceName
    srv: str  # the SRV name, or "" for a hostname destination
    hostname: str
    port: int
    family: Family
    protocol: str
    tls: UpstreamTLS

    @property
    def dns_name(self) -> str:
        return self.srv or self.hostname

    @property
    def kind(self) -> str:
        return "srv" if self.srv else "hostname"


@dataclass(frozen=True, slots=True)
class DNSCatalogSettings:
    """The plugin's section, read. ``nameservers`` empty means the system's."""

    nameservers: tuple[tuple[str, int], ...]
    policy: RefreshPolicy
    timeout: float
    family: Family
    services: tuple[DNSService, ...]
    edns_payload: int = DEFAULT_EDNS_PAYLOAD
    search: tuple[str, ...] | None = None  # None: resolv.conf's
    ndots: int | None = None


def stack_name(site: SiteConfig) -> str | None:
    """The name this plugin has in the site's stack (its section is named the same)."""
    return site.stack_name(NAME, MODULE)


def read_settings(site: SiteConfig) -> tuple[DNSCatalogSettings, list[ConfigProblem]]:
    """Read the section; every bad or unknown key is a problem (only TLS files are checked
    on disk, by :func:`tgw_validate_site_config`)."""
    reader = site.reader(stack_name(site) or NAME)
    nameservers: list[tuple[str, int]] = []
    for text in reader.strings("nameservers"):
        try:
            nameservers.append(parse_nameserver(text))
        except ValueError as e:
            reader.problem("nameservers", str(e))
    min_ttl = reader.duration("min_ttl", DEFAULT_MIN_TTL, minimum=MIN_TTL_FLOOR)
    max_ttl = reader.duration("max_ttl", DEFAULT_MAX_TTL, minimum=MIN_TTL_FLOOR)
    if max_ttl < min_ttl:
        reader.problem("max_ttl", f"must not be below min_ttl ({max_ttl:g}s < {min_ttl:g}s)")
        max_ttl = min_ttl
    max_stale = reader.duration("max_stale", DEFAULT_MAX_STALE)
    hold_nx = reader.duration("hold_nx", DEFAULT_HOLD_NX)
    timeout = reader.duration("timeout", DEFAULT_TIMEOUT, minimum=0.01)
    edns_payload, search, ndots = read_stub_options(reader, "")
    # (the site's own dns_* keys are read the same way, for host-name endpoints)
    family = Family(reader.string("family", DEFAULT_FAMILY.value, choices=FAMILIES))
    services: list[DNSService] = []
    table = reader.table_value("services")
    for key in sorted(table):
        value = table[key]
        if not isinstance(value, Mapping):
            reader.problem(f"services.{key}", "must be a table")
            continue
        sub = SectionReader(reader.file, reader.key(f"services.{key}"), value)
        service = _read_service(site, sub, key, family)
        reader.problems += sub.finish()
        if service is not None:
            services.append(service)
    problems = reader.finish()
    policy = RefreshPolicy(min_ttl, max_ttl, max_stale, hold_nx)
    settings = DNSCatalogSettings(
        tuple(nameservers),
        policy,
        timeout,
        family,
        tuple(services),
        edns_payload,
        search,
        ndots,
    )
    return settings, problems


def _read_service(
    site: SiteConfig, r: SectionReader, key: str, default_family: Family
) -> DNSService | None:
    ok = True
    if not _SERVICE_RE.match(key):
        r.problems.append(
            ConfigProblem(
                r.file, r.prefix, "is not a service name (lower-case letters, digits, dashes)"
            )
        )
        ok = False
    srv = r.string("srv") or ""
    hostname = r.string("hostname") or ""
    port = r.integer("port", 0, minimum=1, maximum=65535) if "port" in r.table else 0
    if bool(srv) == bool(hostname):
        r.problems.append(
            ConfigProblem(r.file, r.prefix, 'needs exactly one of srv = "..." or hostname = "..."')
        )
        ok = False
    for field, name in (("srv", srv), ("hostname", hostname)):
        if name and not (valid_hostname(name) or (field == "hostname" and is_ip_literal(name))):
            r.problem(field, f"{name!r} is not a DNS name")
            ok = False
    if hostname and "port" not in r.table:
        r.problem("port", "is required with hostname")
        ok = False
    if srv and "port" in r.table:
        r.problem("port", "comes from the SRV records; remove it")
    namespace = r.string("namespace", DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    protocol = r.string("protocol", "tcp", choices=PROTOCOLS) or "tcp"
    family = Family(r.string("family", default_family.value, choices=FAMILIES))
    tls_files = {}
    for field in ("ca_file", "cert_file", "key_file"):
        raw = r.string(field, "") or ""
        if raw:
            path = site.base_dir / raw
            tls_files[field] = str(path)
    sni = r.string("sni", "") or ""
    if ("cert_file" in tls_files) != ("key_file" in tls_files):
        r.problem("cert_file", "cert_file and key_file go together")
    if "ca_file" not in tls_files and (tls_files or sni):
        r.problem("ca_file", "is required for TLS (cert_file, key_file or sni without it)")
    if not ok:
        return None
    return DNSService(
        service=ServiceName(key, namespace),
        srv=srv.rstrip("."),
        hostname=hostname.rstrip("."),
        port=port,
        family=family,
        protocol=protocol,
        tls=UpstreamTLS(sni=sni, **tls_files),
    )


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> list[ConfigProblem]:
    """Check the section and that every TLS file it names exists."""
    name = stack_name(site)
    if name is None:
        return []
    settings, problems = read_settings(site)
    for service in settings.services:
        for field in ("ca_file", "cert_file", "key_file"):
            path = getattr(service.tls, field)
            if path and not _exists(path):
                key = f"{site.prefix}.{name}.services.{service.service.name}.{field}"
                problems.append(ConfigProblem(site.file, key, f"{path!r} does not exist"))
    return problems


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).exists()


@hookimpl
def tgw_catalog_sources(site: SiteContext) -> list[CatalogSource]:
    """One :class:`DNSCatalogSource` when the site's stack names this plugin."""
    if stack_name(site.config) is None:
        return []
    return [DNSCatalogSource(site)]


class _Metrics:
    """This plugin's metric families (shared by every site of the process)."""

    def __init__(self, site: SiteContext) -> None:
        family = site.metrics.family
        labels = ["site", *SERVICE_LABELS]  # as every per-service family
        self.resolutions = family(
            Counter,
            "tgw_dns_resolutions",
            "DNS catalog lookups, by result (success, empty, nxdomain, servfail, refused, "
            "timeout, cname_loop, error).",
            [*labels, "result"],
        )
        self.endpoints = family(
            Gauge, "tgw_dns_endpoints", "Endpoints a DNS destination has now.", labels
        )
        self.stale = family(
            Gauge,
            "tgw_dns_stale",
            "1 while a DNS destination serves an older answer because lookups fail.",
            labels,
        )
        self.held = family(
            Gauge,
            "tgw_dns_held",
            "1 while a DNS destination keeps its endpoints for hold_nx after a negative "
            "answer (NXDOMAIN, NODATA).",
            labels,
        )
        self.stale_served = family(
            Counter,
            "tgw_dns_stale_served",
            "Failed or empty DNS lookups answered by keeping the last good endpoints.",
            labels,
        )
        self.expired = family(
            Counter,
            "tgw_dns_expired",
            "DNS destinations emptied because lookups failed for longer than max_stale.",
            labels,
        )
        self.last_success = family(
            Gauge,
            "tgw_dns_last_success_timestamp_seconds",
            "When a DNS destination's name last resolved.",
            labels,
        )
        self.age = family(
            Gauge,
            "tgw_dns_record_age_seconds",
            "Age of the DNS answer in force for a destination (NaN when none is).",
            labels,
        )
        self.ttl = family(
            Gauge,
            "tgw_dns_ttl_seconds",
            "The clamped TTL of the last answer: when the name is asked again.",
            labels,
        )


# Which source currently owns a (registry, site, service) age gauge: a reloaded site's
# new source starts before the old one stops, so the old one must not clear it.
_AGE_OWNERS: weakref.WeakValueDictionary[tuple[int, str, str], DNSCatalogSource] = (
    weakref.WeakValueDictionary()
)


def _content_version(destinations: tuple[Destination, ...]) -> str:
    # Frozen dataclasses with sorted meta: the repr is a faithful fingerprint of content.
    return hashlib.sha256(repr(destinations).encode()).hexdigest()[:16]


class DNSCatalogSource:
    """A :class:`~gwcore.contract.providers.CatalogSource` whose endpoints come from DNS.

    One :class:`~gwcore.net.resolver.DNSWatch` per destination keeps its name fresh;
    :meth:`start` publishes the first snapshot once every destination's first lookup
    has finished (each is bounded by ``timeout``), then a new snapshot whenever the
    endpoints in force change.
    """

    name = NAME

    def __init__(self, site: SiteContext) -> None:
        self._site = site
        settings, _ = read_settings(site.config)  # validated before the site starts
        self.settings = settings
        self._resolver = DNSResolver(
            site.reactor,
            settings.nameservers or None,
            timeout=settings.timeout,
            edns_payload=settings.edns_payload,
            search=settings.search,
            ndots=settings.ndots,
        )
        self._metrics = _Metrics(site)
        self._catalog_errors = site.metrics.catalog_errors.labels(site=site.name, source=NAME)
        self._publish: Callable[[CatalogSnapshot], None] | None = None
        self._version: str | None = None
        self._last_success: float | None = None
        self._errors: dict[str, str] = {}  # service -> error while not fresh
        self._watches: dict[str, DNSWatch[Any]] = {}
        self._services = {s.service.name: s for s in settings.services}
        for service in settings.services:
            self._watches[service.service.name] = DNSWatch(
                site.reactor,
                service.dns_name,
                partial(self._lookup, service),
                settings.policy,
                partial(self._on_update, service),
            )

    # --- CatalogSource ------------------------------------------------------------

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> Deferred[None]:
        """Look every name up; publish the first snapshot when all have answered or failed."""
        self._publish = publish
        registry = id(self._site.metrics.registry)
        for name in self._watches:
            _AGE_OWNERS[(registry, self._site.name, name)] = self
            labels = self._labels(self._services[name])
            self._metrics.age.labels(**labels).set_function(
                partial(_age_of, registry, self._site.name, name)
            )
        firsts = [watch.start() for watch in self._watches.values()]

        def first_snapshot(_: object) -> None:
            self._last_success = self._site.reactor.seconds()
            self._republish(force=True)

        return DeferredList(firsts).addCallback(first_snapshot)

    def stop(self) -> None:
        for watch in self._watches.values():
            watch.stop()
        self._resolver.close()
        registry = id(self._site.metrics.registry)
        for name in self._watches:
            key = (registry, self._site.name, name)
            if _AGE_OWNERS.get(key) is self:
                del _AGE_OWNERS[key]

    def health(self) -> SourceHealth:
        """``last_error`` names one destination whose last lookup failed, if any."""
        last_error = None
        if self._errors:
            service, error = next(reversed(self._errors.items()))
            last_error = f"{service}: {error}"
        return SourceHealth(self._last_success, last_error)

    # --- introspection ------------------------------------------------------------

    def record_age(self, service: str) -> float:
        """Seconds since the answer in force for ``service`` was received (NaN: none)."""
        watch = self._watches[service]
        if watch.answer is None or watch.state.last_success is None:
            return math.nan
        return self._site.reactor.seconds() - watch.state.last_success

    def destinations(self) -> tuple[Destination, ...]:
        """Every configured destination with the endpoints in force now."""
        return tuple(
            self._destination(self._services[name], self._watches[name].answer)
            for name in sorted(self._watches)
        )

    # --- internals ----------------------------------------------------------------

    def _lookup(self, service: DNSService) -> Deferred[Any]:
        if service.srv:
            return self._resolver.resolve_service(service.srv, service.family)
        return self._resolver.resolve_addresses(service.hostname, service.family)

    def _endpoints(self, service: DNSService, answer: Any) -> tuple[Endpoint, ...]:
        if isinstance(answer, ServiceAnswer):
            return srv_endpoints(answer.targets)
        if isinstance(answer, AddressAnswer):
            return host_endpoints(service.hostname, answer.addresses, service.port)
        return ()

    def _destination(self, service: DNSService, answer: Any) -> Destination:
        return Destination(
            service=service.service,
            datacenter=self._site.config.datacenter,
            endpoints=self._endpoints(service, answer),
            tls=service.tls,
            protocol=service.protocol,
            meta=MappingProxyType({"dns_name": service.dns_name, "dns_type": service.kind}),
        )

    def _labels(self, service: DNSService) -> dict[str, str]:
        return {"site": self._site.name, **service_labels(self._destination(service, None))}

    def _on_update(self, service: DNSService, update: WatchUpdate[Any]) -> None:
        name = service.service.name
        labels = self._labels(service)
        m = self._metrics
        m.resolutions.labels(**labels, result=update.result).inc()
        step = update.step
        endpoints = self._endpoints(service, update.answer)
        m.endpoints.labels(**labels).set(len(endpoints))
        m.stale.labels(**labels).set(1 if step.status is Status.STALE else 0)
        m.held.labels(**labels).set(1 if step.status is Status.HELD else 0)
        now = self._site.reactor.seconds()
        answered = step.status in (Status.FRESH, Status.NEGATIVE, Status.HELD)
        if update.result == "success" or (update.result in ("empty", "nxdomain") and answered):
            self._last_success = now
            self._errors.pop(name, None)
            m.last_success.labels(**labels).set(now)
            m.ttl.labels(**labels).set(step.refresh_in)
            self._site.metrics.catalog_last_success.labels(site=self._site.name, source=NAME).set(
                now
            )
        else:
            self._errors.pop(name, None)
            self._errors[name] = update.error or update.result
            if update.result not in ("empty", "nxdomain"):
                self._catalog_errors.inc()
            if step.status is Status.STALE:
                m.stale_served.labels(**labels).inc()
            if step.event == "expired":
                m.expired.labels(**labels).inc()
        self._log(service, update, len(endpoints))
        if step.changed:
            self._republish()

    def _log(self, service: DNSService, update: WatchUpdate[Any], endpoints: int) -> None:
        log, step = self._site.log, update.step
        common = {
            "service": service.service.name,
            "kind": service.kind,
            "dns_name": service.dns_name,
            "error": update.error or update.result,
        }
        if step.event == "stale":
            deadline = self._watches[service.service.name].state.stale_deadline or 0.0
            log.warn(
                "DNS {kind} lookup of {dns_name} for {service} failed ({error}); serving its "
                "last good {n} endpoints for up to {left:.1f}s more (max_stale)",
                n=endpoints,
                left=max(0.0, deadline - self._site.reactor.seconds()),
                **common,
            )
        elif step.event == "expired":
            log.error(
                "DNS {kind} lookup of {dns_name} for {service} has failed for longer than "
                "max_stale ({max_stale:g}s); its endpoints are dropped and connections to "
                "{service} get 'no healthy endpoints' until it resolves again (last error: "
                "{error})",
                max_stale=self.settings.policy.max_stale,
                **common,
            )
        elif step.event == "unresolved":
            log.error(
                "DNS {kind} lookup of {dns_name} for {service} failed ({error}); {service} "
                "has no endpoints until it resolves",
                **common,
            )
        elif step.event == "held":
            log.warn(
                "DNS {kind} lookup of {dns_name} for {service}: the name has no records now "
                "({error}); its last {n} endpoints are kept for {hold:g}s (hold_nx), then "
                "removed",
                n=endpoints,
                hold=self.settings.policy.hold_nx,
                **common,
            )
        elif step.event in ("removed", "negative"):
            log.warn(
                "DNS {kind} lookup of {dns_name} for {service}: the name has no records "
                "({error}); {service} has no endpoints until it has",
                **common,
            )
        elif step.event == "recovered":
            log.info(
                "DNS {kind} lookup of {dns_name} for {service} answers again: {n} endpoints",
                n=endpoints,
                **common,
            )

    def _republish(self, force: bool = False) -> None:
        if self._publish is None or (not force and self._version is None):
            return  # before the first snapshot: start() publishes once all have answered
        destinations = self.destinations()
        version = _content_version(destinations)
        if version == self._version:
            return
        self._version = version
        self._publish(CatalogSnapshot(source=NAME, destinations=destinations, version=version))


def _age_of(registry: int, site: str, service: str) -> float:
    owner = _AGE_OWNERS.get((registry, site, service))
    return owner.record_age(service) if owner is not None else math.nan
