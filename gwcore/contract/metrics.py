"""Every Prometheus metric tgw exports (the names are public surface: see docs/metrics.md).

One :class:`GatewayMetrics` per process, on its own registry so tests can run several
gateways in one interpreter. Labels are bounded: site and service names come from
configuration and catalogs, reasons from fixed vocabularies; never a client address
or identity. The data path does not touch these per chunk: byte counts are added
when a connection closes and by the site's periodic sweep.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from gwcore import __version__
from gwcore.policy.model import Destination

_M = TypeVar("_M", bound=MetricWrapperBase)

# A destination in every per-service family: two `billing` services in two namespaces,
# partitions or datacenters never share a series (Consul's Envoy stats tag the same four:
# consul_destination_service/_namespace/_partition/_datacenter).
SERVICE_LABELS = ("service", "namespace", "partition", "datacenter")
ServiceKey = tuple[str, str, str, str]
NO_SERVICE: ServiceKey = ("", "", "", "")


def service_key(destination: Destination | None) -> ServiceKey:
    """The values of :data:`SERVICE_LABELS` for ``destination`` (all ``""`` before routing)."""
    if destination is None:
        return NO_SERVICE
    svc = destination.service
    return (svc.name, svc.namespace, svc.partition, destination.datacenter)


def service_labels(destination: Destination | None) -> dict[str, str]:
    """``{"service": ..., "namespace": ..., "partition": ..., "datacenter": ...}``."""
    return dict(zip(SERVICE_LABELS, service_key(destination), strict=True))


# Loopback and same-rack connects take well under a millisecond: start at 100 µs.
_CONNECT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
# Fixed reason vocabularies (docs/metrics.md), created at 0 with each site so that
# increase() sees the first event after a restart (a series born at 1 shows no rise).
HANDSHAKE_REASONS = (
    *("missing_sni", "invalid_sni", "unknown_sni", "no_certificate", "addon_veto"),
    *("no_client_cert", "untrusted_ca", "expired_cert", "cert_not_yet_valid"),
    *("bad_client_cert", "tls_version", "not_tls", "protocol_error", "client_closed"),
    *("timeout", "no_uri_san", "multiple_uri_sans", "bad_spiffe_id", "untrusted_domain"),
    *("wrong_trust_bundle", "ca_certificate", "bad_key_usage", "not_a_service"),
    "proxy_protocol",
)
NO_ROUTE_REASONS = ("missing_sni", "invalid_sni", "unknown_sni", "no_certificate")
REJECTED_REASONS = (
    *("overflow", "process_overflow", "handshake_overflow", "addon_veto", "addon_close"),
    *("early_data_overflow", "denied", "upstream_unavailable"),
    *("no_strategy", "policy_revoked", "route_removed", "route_changed", "trust_root_removed"),
)
_HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class GatewayMetrics:
    """The metric families, created on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.exposition = self.registry
        """What ``/metrics`` serves: with workers, every worker's values added up."""
        self._families: dict[str, MetricWrapperBase] = {}
        self._owners: dict[str, str] = {}
        r = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a worker (gwcore.runtime.workers)
            from gwcore.contract.metrics_series import LiveMultiProcessCollector

            self.exposition = CollectorRegistry()
            self.exposition.register(LiveMultiProcessCollector())
        # Info is per process (not in the multiprocess files): served directly.
        self.build_info = Info("tgw_build", "tgw version.", registry=self.exposition)
        self.build_info.info({"version": __version__})

        # downstream
        self.accepted = Counter(
            "tgw_downstream_accepted",
            "TCP connections accepted by a site's listener.",
            ["site"],
            registry=r,
        )
        self.connections = Counter(
            "tgw_downstream_connections",
            "Downstream connections that completed the mTLS handshake, by destination service.",
            ["site", *SERVICE_LABELS],
            registry=r,
        )
        self.active = Gauge(
            "tgw_downstream_connections_active",
            "Downstream connections open now.",
            ["site"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.access_log_dropped = Counter(
            "tgw_access_log_dropped",
            "Access-log records that could not be written (disk full, I/O error).",
            registry=r,
        )
        self.max_connections = Gauge(
            "tgw_downstream_max_connections",
            "The site's max_connections (compare with tgw_downstream_connections_active).",
            ["site"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.closed = Counter(
            "tgw_connections_closed",
            "Downstream connections ended, by destination service (empty before routing) "
            "and close cause (the access log's close_cause).",
            ["site", *SERVICE_LABELS, "cause"],
            registry=r,
        )
        self.handshake_seconds = Histogram(
            "tgw_tls_handshake_seconds",
            "Time from accept to the end of a completed downstream TLS handshake.",
            ["site"],
            buckets=_HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.handshakes = Counter(
            "tgw_tls_handshakes",
            "Completed downstream TLS handshakes, by TLS version.",
            ["site", "version"],
            registry=r,
        )
        self.no_data = Counter(
            "tgw_downstream_no_data",
            "Connections the client closed without sending a byte (a load balancer's TCP "
            "health check, a port scan); not counted as TLS handshake errors.",
            ["site"],
            registry=r,
        )
        self.rejected = Counter(
            "tgw_downstream_rejected",
            "Downstream connections refused or closed by the gateway, by reason (overflow, "
            "process_overflow, handshake_overflow, addon_veto, addon_close, denied, "
            "early_data_overflow, upstream_unavailable, no_strategy, "
            "policy_revoked, route_removed, route_changed, trust_root_removed).",
            ["site", "reason"],
            registry=r,
        )
        self.handshake_errors = Counter(
            "tgw_tls_handshake_errors",
            "Failed or refused downstream TLS handshakes, by reason.",
            ["site", "reason"],
            registry=r,
        )
        self.no_route = Counter(
            "tgw_no_route",
            "Connections whose SNI selected no usable route (unknown_sni, missing_sni, "
            "invalid_sni, no_certificate).",
            ["site", "reason"],
            registry=r,
        )
        # authorization
        self.authz_decisions = Counter(
            "tgw_authz_decisions",
            "Authorization decisions, by the engine that decided and the verdict.",
            ["site", *SERVICE_LABELS, "engine", "decision"],
            registry=r,
        )
        self.authz_errors = Counter(
            "tgw_authz_errors",
            "Authorization engine failures, timeouts and answers that are not a decision"
            " (each is a deny), by reason: exception, timeout, none, wrong_type.",
            ["site", "engine", "reason"],
            registry=r,
        )
        # upstream
        self.upstream_connect_failures = Counter(
            "tgw_upstream_connect_failures",
            "Failed upstream connect attempts, by reason (refused, timeout, dns, error, or a "
            "tls_* reason of tgw_upstream_tls_errors).",
            ["site", *SERVICE_LABELS, "reason"],
            registry=r,
        )
        self.upstream_tls_errors = Counter(
            "tgw_upstream_tls_errors",
            "Upstream TLS failures by reason (tls_san_mismatch, tls_untrusted, tls_expired, "
            "tls_not_yet_valid, tls_handshake, tls_client_cert_rejected, tls_config, tls_error).",
            ["site", *SERVICE_LABELS, "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "tgw_upstream_retries",
            "Connect attempts after the first for one client connection.",
            ["site", *SERVICE_LABELS],
            registry=r,
        )
        self.upstream_ejections = Counter(
            "tgw_upstream_ejections",
            "Endpoints ejected by passive outlier detection.",
            ["site", *SERVICE_LABELS],
            registry=r,
        )
        self.upstream_endpoints = Gauge(
            "tgw_upstream_endpoints",
            "Endpoints of a destination by state (healthy: usable now; ejected; total).",
            ["site", *SERVICE_LABELS, "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.upstream_unavailable = Counter(
            "tgw_upstream_unavailable",
            "Connections closed because no endpoint could be reached (or none was healthy).",
            ["site", *SERVICE_LABELS],
            registry=r,
        )
        self.upstream_connect_seconds = Histogram(
            "tgw_upstream_connect_seconds",
            "Time to open a successful upstream connection.",
            ["site", *SERVICE_LABELS],
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.bytes = Counter(
            "tgw_bytes",
            "Bytes forwarded; direction=upstream is client to service, downstream the reverse.",
            ["site", *SERVICE_LABELS, "direction"],
            registry=r,
        )
        self.connection_seconds = Histogram(
            "tgw_connection_duration_seconds",
            "Lifetime of forwarded connections.",
            ["site", *SERVICE_LABELS],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.idle_timeouts = Counter(
            "tgw_idle_timeouts",
            "Connections closed for being idle.",
            ["site", *SERVICE_LABELS],
            registry=r,
        )
        self.hostname_resolutions = Counter(
            "tgw_hostname_resolutions",
            "Lookups of hostname endpoints, by result (success, empty, nxdomain, servfail, "
            "refused, timeout, cname_loop, error).",
            ["site", "result"],
            registry=r,
        )
        self.hostname_answers = Counter(
            "tgw_hostname_answers",
            "Answers for hostname endpoints, by the source that answered: localhost "
            "(RFC 6761, no lookup), hosts (the hosts file) or dns.",
            ["site", "source"],
            registry=r,
        )
        # control plane
        self.routes = Gauge(
            "tgw_routes",
            "Destinations in the live route table.",
            ["site"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.catalog_last_success = Gauge(
            "tgw_catalog_last_success_timestamp_seconds",
            "When a catalog source last produced a good snapshot.",
            ["site", "source"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.catalog_errors = Counter(
            "tgw_catalog_errors",
            "Catalog source failures (the last good snapshot stays in force).",
            ["site", "source"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "tgw_certificate_expiry_timestamp_seconds",
            "notAfter of certificates in use (kind=leaf|root|upstream_ca|upstream_cert).",
            ["site", "kind", "name"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.certificate_errors = Counter(
            "tgw_certificate_errors",
            "Certificate provider failures (the previous material stays in force).",
            ["site", "provider"],
            registry=r,
        )
        self.addon_errors = Counter(
            "tgw_addon_errors",
            "Exceptions raised by addon hook implementations.",
            ["site", "hook"],
            registry=r,
        )
        self.reloads = Counter(
            "tgw_config_reloads",
            "Configuration reloads, by result (applied; rejected: invalid file; failed: a site "
            "could not start, the running config stays).",
            ["result"],
            registry=r,
        )
        # L7 destinations (docs/l7.md): per request, bounded labels (never a path).
        self.http_requests = Counter(
            "tgw_http_requests",
            "HTTP requests answered at L7 destinations, by method class (GET, HEAD, POST, PUT, "
            "DELETE, PATCH, OPTIONS, other) and response code class (1xx..5xx).",
            ["site", *SERVICE_LABELS, "method_class", "code_class"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "tgw_http_request_duration_seconds",
            "From a request's head to the end of its response, at L7 destinations.",
            ["site", *SERVICE_LABELS],
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.http_denied = Counter(
            "tgw_http_denied",
            "HTTP requests denied (403) at L7 destinations, by the engine that denied "
            "(engine_error when one failed).",
            ["site", *SERVICE_LABELS, "reason"],
            registry=r,
        )
        self.http_bad_requests = Counter(
            "tgw_http_bad_requests",
            "Malformed HTTP requests answered 400 (or 431) at L7 destinations, by reason.",
            ["site", "reason"],
            registry=r,
        )
        self.admin_refused = Counter(
            "tgw_admin_refused",
            "Admin endpoint requests refused, by reason (host: a Host header that is not "
            "loopback or configured; token: a missing or wrong bearer token).",
            ["reason"],
            registry=r,
        )

    def family(
        self,
        kind: type[_M],
        name: str,
        documentation: str,
        labels: list[str],
        *,
        owner: str | None = None,
        **kw: Any,
    ) -> _M:
        """Get or create a plugin's own metric family on this registry.

        Plugins call this from each site they serve; the first call creates the
        family and later calls (other sites, reloads) get the same object, so a
        name is never registered twice. Always include a ``site`` label.

        ``owner`` (the plugin's name) claims the family: a later call by another owner,
        or with other labels, raises ``ValueError`` naming both, so two plugins that
        chose one name never count into each other's family. A gauge's
        ``multiprocess_mode`` is ``livemax`` unless given (``livesum`` for counts that
        workers add up; ``set_function`` gauges do not work with workers).
        """
        existing = self._families.get(name)
        if existing is not None:
            if not isinstance(existing, kind):
                raise TypeError(f"metric {name} exists as {type(existing).__name__}")
            first = self._owners.get(name)
            if owner is not None and first is not None and owner != first:
                raise ValueError(f"metric {name} is registered by plugin {first!r}, not {owner!r}")
            if tuple(labels) != tuple(existing._labelnames):
                raise ValueError(
                    f"metric {name} exists with labels {list(existing._labelnames)}"
                    f"{f' (plugin {first!r})' if first else ''}, not {labels}"
                )
            return existing
        if issubclass(kind, Gauge):
            # With workers a gauge's mode decides how the processes' values combine; the
            # library's default ("all") adds a pid label and keeps dead workers' values.
            kw.setdefault("multiprocess_mode", "livemax")
        created = kind(name, documentation, labels, registry=self.registry, **kw)
        self._families[name] = created
        if owner is not None:
            self._owners[name] = owner
        return created


class SiteChildren:
    """The labelled children one site updates on every connection, resolved once.

    Each ``family.labels(...)`` call takes a lock and builds a key tuple; a
    connection's happy path touches nine of them. A :class:`Site` holds one of these
    and asks it for each (service, ...) combination, which is resolved on first use
    and then served from a dict. Bounded: services come from the catalog, engines
    and verdicts from fixed sets. Children are never removed from these families, so
    a cached child always belongs to its family.
    """

    def __init__(self, metrics: GatewayMetrics, site: str) -> None:
        self.metrics = metrics
        self.site = site
        self.accepted = metrics.accepted.labels(site=site)
        self.active = metrics.active.labels(site=site)
        self.handshake_seconds = metrics.handshake_seconds.labels(site=site)
        metrics.no_data.labels(site=site)
        for reason in HANDSHAKE_REASONS:
            metrics.handshake_errors.labels(site=site, reason=reason)
        for reason in NO_ROUTE_REASONS:
            metrics.no_route.labels(site=site, reason=reason)
        for reason in REJECTED_REASONS:
            metrics.rejected.labels(site=site, reason=reason)
        self._closed: dict[tuple[ServiceKey, str], Any] = {}
        self._services: dict[ServiceKey, ServiceChildren] = {}
        self._decisions: dict[tuple[ServiceKey, str, str], Any] = {}
        self._handshakes: dict[str, Any] = {}
        self._http_requests: dict[tuple[ServiceKey, str, str], Any] = {}
        self._http_seconds: dict[ServiceKey, Any] = {}

    def handshakes(self, version: str) -> Any:
        """``tgw_tls_handshakes_total{site, version}`` (versions: a fixed set)."""
        child = self._handshakes.get(version)
        if child is None:
            child = self._handshakes[version] = self.metrics.handshakes.labels(
                site=self.site, version=version
            )
        return child

    def service(self, destination: Destination) -> ServiceChildren:
        key = service_key(destination)
        children = self._services.get(key)
        if children is None:
            children = self._services[key] = ServiceChildren(self.metrics, self.site, key)
        return children

    def of(self, family: _M, destination: Destination | None, **labels: str) -> _M:
        """``family``'s child for this site, ``destination`` and the other ``labels``."""
        return family.labels(site=self.site, **service_labels(destination), **labels)

    def closed(self, destination: Destination | None, cause: str) -> Any:
        key = (service_key(destination), cause)
        child = self._closed.get(key)
        if child is None:
            child = self._closed[key] = self.metrics.closed.labels(self.site, *key[0], cause)
        return child

    def forget(self, service: ServiceKey) -> None:
        """The service left the catalog: delete its per-service series (connections,
        bytes, durations, connect times, decisions, close causes), so dashboards and
        alerts follow the catalog. A connection still open re-creates what it reports."""
        from gwcore.contract.metrics_series import remove_series

        m, site = self.metrics, self.site
        self._services.pop(service, None)
        for family in (m.connections, m.connection_seconds, m.upstream_connect_seconds):
            remove_series(family, site, *service)
        for direction in ("upstream", "downstream"):
            remove_series(m.bytes, site, *service, direction)
        for key in [k for k in self._decisions if k[0] == service]:
            remove_series(m.authz_decisions, site, *key[0], *key[1:])
            del self._decisions[key]
        for key in [k for k in self._closed if k[0] == service]:
            remove_series(m.closed, site, *key[0], key[1])
            del self._closed[key]
        remove_series(m.http_request_seconds, site, *service)
        self._http_seconds.pop(service, None)
        for key in [k for k in self._http_requests if k[0] == service]:
            del self._http_requests[key]
        for family in (m.http_requests, m.http_denied):
            _remove_service_series(family, site, service)

    def decision(self, destination: Destination, engine: str, verdict: str) -> Any:
        key = (service_key(destination), engine, verdict)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.metrics.authz_decisions.labels(
                self.site, *key[0], engine, verdict
            )
        return child

    def http_requests(self, destination: Destination, method_class: str, code_class: str) -> Any:
        """``tgw_http_requests_total`` for one answered request (classes: fixed sets)."""
        key = (service_key(destination), method_class, code_class)
        child = self._http_requests.get(key)
        if child is None:
            child = self._http_requests[key] = self.metrics.http_requests.labels(
                self.site, *key[0], method_class, code_class
            )
        return child

    def http_seconds(self, destination: Destination) -> Any:
        """``tgw_http_request_duration_seconds`` of ``destination``."""
        key = service_key(destination)
        child = self._http_seconds.get(key)
        if child is None:
            child = self._http_seconds[key] = self.metrics.http_request_seconds.labels(
                self.site, *key
            )
        return child


def _remove_service_series(family: Any, site: str, service: ServiceKey) -> None:
    """Every series of ``family`` for (``site``, ``service``), whatever its other labels
    (method and code classes, denial reasons): the children the family made so far."""
    from gwcore.contract.metrics_series import remove_series

    prefix = (site, *service)
    for labels in list(getattr(family, "_metrics", {})):
        if tuple(labels[: len(prefix)]) == prefix:
            remove_series(family, *labels)


class ServiceChildren:
    """The per-(site, service) children of a connection's happy path."""

    __slots__ = (
        "bytes_downstream",
        "bytes_upstream",
        "connection_seconds",
        "connections",
        "upstream_connect_seconds",
    )

    def __init__(self, metrics: GatewayMetrics, site: str, service: ServiceKey) -> None:
        self.connections = metrics.connections.labels(site, *service)
        self.connection_seconds = metrics.connection_seconds.labels(site, *service)
        self.upstream_connect_seconds = metrics.upstream_connect_seconds.labels(site, *service)
        self.bytes_upstream = metrics.bytes.labels(site, *service, "upstream")
        self.bytes_downstream = metrics.bytes.labels(site, *service, "downstream")
