"""The ``consul_catalog`` plugin: linked services and their instances from a Consul agent.

Section ``[sites.NAME.consul_catalog]`` (all optional):

- the connection keys of :func:`gwcore.net.consul.read_consul_settings`: ``address``
  (``http://127.0.0.1:8500``), ``token`` / ``token_file``, ``ca_file``, ``cert_file``,
  ``key_file``, ``datacenter``, ``wait`` (``5m``), ``timeout`` (``10s``),
  ``max_connections`` (16), ``rate`` (5 queries/s per watch), ``retry_min`` (``0.5s``),
  ``retry_max`` (``60s``);
- ``gateway``: the gateway's service name in Consul (default: the site's ``name``);
- ``register`` (``true``): register this instance with the agent as a
  ``terminating-gateway`` service with a TCP check once the site listens, and
  deregister it when the site stops;
- ``service_id`` (``<gateway>-<host>-<port>``), ``register_address`` (the listener's
  host, or none for a wildcard bind so Consul uses the node's), ``check_interval``
  (``10s``), ``check_address`` (the address the TCP check dials: default the
  registered one, for a wildcard bind the agent's node address from
  ``/v1/agent/self``);
- ``check``: ``"tcp"`` (default: the agent connects to the listener) or ``"http"``:
  the agent GETs the admin endpoint's ``/ready`` (``check_http`` overrides the URL),
  so the instance turns critical when it is not ready, and while it drains
  (``gwcore.runtime.drain``). On stop the instance is deregistered before it drains;
- ``health_watches`` (128): linked services with their own blocking health query;
- mesh sites only: ``mesh_gateway_service`` (``mesh-gateway``), ``datacenters_interval``
  (``30s``).

On a mesh site (``role = "mesh"``) the source is :class:`~gwcore.plugins.consul_mesh.
ConsulMeshSource`, which reads what Consul's own mesh gateway reads (its docstring);
what follows is the terminating site's.

What it reads (reference §3, §5), every watch a blocking query:

- ``/v1/catalog/gateway-services/<gateway>``: the linked services, wildcard ones
  included (``FromWildcard``), with their ``CAFile``/``CertFile``/``KeyFile``/``SNI``;
- ``/v1/config/service-defaults``: every service's ``Protocol``; a service without one
  takes ``Config.protocol`` of ``/v1/config/proxy-defaults`` (the ``global`` entry),
  else ``tcp`` (a protocol change rebuilds the routes: new connections use it);
- ``/v1/config/mesh``: the ``mesh`` entry's ``HTTP`` options (the snapshot's
  ``mesh_http``; none listed = Consul's defaults). The listing is read rather than
  ``/v1/config/mesh/mesh``, which answers a missing entry with a 404 a blocking watch
  would count as a failure; the one entry of the partition is the same either way;
- linked *destinations* (``ServiceKind: "destination"``): served from their
  ``service-defaults`` ``Destination`` (:mod:`gwcore.policy.destinations`), no health;
- ``/v1/config/service-resolver``: subsets (one route per subset), ``ConnectTimeout``,
  ``LoadBalancer``, and the caller-side settings reported in ``/routes``
  (:mod:`gwcore.plugins.consul_resolvers`);
- ``/v1/health/service/<svc>``, one blocking query per linked service, as Consul's own
  gateway does (:mod:`gwcore.net.consul_watch`): Consul moves a service's index on any
  change of its answer, a node that moved included. At most ``health_watches`` (128)
  services are watched so, each holding a socket of a pool of that size;
- for linked services beyond ``health_watches``: ``/v1/catalog/services``,
  ``/v1/catalog/nodes`` and ``/v1/health/state/any`` as change detectors. Every change
  of a health answer moves one of those three tables (``services``, ``nodes``,
  ``checks``), and then those services are read again (non-blocking).

A service becomes a route once its instances were read; an unlinked one disappears
with the next snapshot. Every answer goes through :mod:`gwcore.policy.consul_shapes`
(the one parser of Consul's JSON); a linked service or instance it rejects is left out
and reported. When Consul fails, the last good snapshot stays in force
(``tgw_consul_staleness_seconds``, ``/ready`` detail); recovery is automatic.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList

from gwcore.contract.hookspecs import hookimpl
from gwcore.net.consul import (
    BlockingWatch,
    ConsulError,
    ConsulResponse,
    ConsulSettings,
    acquire_client,
    backoff_delay,
    connection_problems,
    read_consul_settings,
)
from gwcore.net.consul_watch import (
    DEFAULT_HEALTH_WATCHES,
    ServiceHealthWatches,
    health_path,
    scope_query,
)
from gwcore.plugins.consul_mesh import ConsulMeshSource
from gwcore.plugins.consul_resolvers import ConsulResolvers
from gwcore.plugins.consul_source import ConsulSource
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.consul_shapes import build_destinations, build_mesh_http, parse_documents
from gwcore.policy.destinations import apply_destinations
from gwcore.policy.http_facts import MeshHttp
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    CatalogSnapshot,
    Destination,
    ServiceName,
)

if TYPE_CHECKING:
    from gwcore.contract.events import SiteStarted
    from gwcore.contract.providers import CatalogSource, SiteContext

NAME = "consul_catalog"
CONFIG_WATCHES = {  # watch (endpoint label) -> config-entry kind it lists
    "config": "service-defaults",
    "config-proxy-defaults": "proxy-defaults",
    "config-mesh": "mesh",
}
MODULE = "gwcore.plugins.consul_catalog"
DEFAULT_CHECK_INTERVAL = 10.0
CHECK_KINDS = ("tcp", "http")
DEFAULT_MESH_GATEWAY_SERVICE = "mesh-gateway"
DEFAULT_DATACENTERS_INTERVAL = 30.0  # Consul's mesh gateway: MaxAge of the datacenters list
MESH_ONLY = ("mesh_gateway_service", "datacenters_interval")


def stack_entry(plugins: Sequence[str]) -> str | None:
    """The name this plugin has in a stack: its built-in name or its module path."""
    return next((entry for entry in (NAME, MODULE) if entry in plugins), None)


@dataclass(frozen=True, slots=True)
class Settings:
    consul: ConsulSettings
    gateway: str
    register: bool = True
    service_id: str = ""
    register_address: str = ""
    check_interval: float = DEFAULT_CHECK_INTERVAL
    health_watches: int = DEFAULT_HEALTH_WATCHES
    check_address: str = ""
    check: str = "tcp"
    check_http: str = ""
    mesh_gateway_service: str = DEFAULT_MESH_GATEWAY_SERVICE  # mesh sites (consul_mesh)
    datacenters_interval: float = DEFAULT_DATACENTERS_INTERVAL


def read_settings(site: SiteConfig, entry: str) -> tuple[Settings, list[ConfigProblem]]:
    reader = site.reader(entry)
    consul = read_consul_settings(reader, site.base_dir)
    gateway = reader.string("gateway", site.name) or site.name
    register = reader.boolean("register", True)
    service_id = reader.string("service_id", "") or ""
    register_address = reader.string("register_address", "") or ""
    interval = reader.duration("check_interval", DEFAULT_CHECK_INTERVAL, minimum=1.0)
    health_watches = reader.integer(
        "health_watches", DEFAULT_HEALTH_WATCHES, minimum=0, maximum=1024
    )
    check_address = reader.string("check_address", "") or ""
    check = reader.string("check", "tcp", choices=CHECK_KINDS) or "tcp"
    check_http = (reader.credential_free_url("check_http") and reader.string("check_http")) or ""
    mesh_gateway_service = (
        reader.string("mesh_gateway_service", DEFAULT_MESH_GATEWAY_SERVICE)
        or DEFAULT_MESH_GATEWAY_SERVICE
    )
    datacenters_interval = reader.duration(
        "datacenters_interval", DEFAULT_DATACENTERS_INTERVAL, minimum=0.05
    )
    if site.role != "mesh":
        for key in MESH_ONLY:
            if key in reader.table:
                reader.problem(key, 'applies to mesh sites (role = "mesh") only')
    connection_problems(reader, consul)
    settings = Settings(
        consul,
        gateway,
        register,
        service_id,
        register_address,
        interval,
        health_watches,
        check_address,
        check,
        check_http,
        mesh_gateway_service,
        datacenters_interval,
    )
    return settings, reader.finish()


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    entry = stack_entry(site.plugins)
    if entry is None:
        return []
    return read_settings(site, entry)[1]


_sources: list[Any] = []  # started sources waiting for their listener


@hookimpl
def tgw_catalog_sources(site: SiteContext) -> Sequence[CatalogSource]:
    entry = stack_entry(site.config.plugins)
    if entry is None:
        return []
    if site.config.role == "mesh":  # what Consul's mesh gateway watches (consul_mesh)
        return [ConsulMeshSource(site, read_settings(site.config, entry)[0], _sources)]
    return [ConsulCatalogSource(site, entry)]


@hookimpl
def tgw_site_started(event: SiteStarted) -> None:
    """Register the instance whose listener just opened (self-registration)."""
    for source in list(_sources):
        if source.owns_listener(event.site, event.address):
            _sources.remove(source)
            source.register(event.address)
            return


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


class ConsulCatalogSource(ConsulSource):
    """A :class:`~gwcore.contract.providers.CatalogSource` fed by a Consul agent."""

    name = NAME

    def __init__(self, site: SiteContext, entry: str | None = None) -> None:
        entry = entry or stack_entry(site.config.plugins) or NAME
        super().__init__(site, read_settings(site.config, entry)[0])
        self._linked: dict[str, dict[str, Any]] = {}
        self._egress: dict[str, dict[str, Any]] = {}  # linked destinations (ServiceKind)
        self._health: dict[str, list[Any]] = {}
        self._names: dict[str, ServiceName] = {}  # linked key -> its full name
        # service-defaults, proxy-defaults, mesh: each kind's last answer (a list)
        self._config: dict[str, list[Any]] = {}
        self._mesh_http: MeshHttp | None = None
        self._resolvers = ConsulResolvers()
        self._gateway_loaded = False
        self._health_watches: ServiceHealthWatches | None = None
        self._refreshing = False
        self._refresh_again = False

    # --- CatalogSource ------------------------------------------------------------

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> Deferred[None]:
        self._publish = publish
        self._running = True
        self.client = acquire_client(self._site.reactor, self.settings.consul)
        self._first = Deferred()
        gw = self.gateway

        def watch(endpoint: str, path: str, on_change: Callable[[ConsulResponse], Any]) -> None:
            w = BlockingWatch(
                self.client,
                endpoint,
                path,
                on_change,
                self._failed,
                on_ok=self._answered,
                rng=self._rng,
            )
            self._watches.append(w)

        watch("gateway-services", f"/v1/catalog/gateway-services/{gw}", self._on_gateway)
        for endpoint, kind in CONFIG_WATCHES.items():
            watch(endpoint, f"/v1/config/{kind}", functools.partial(self._on_config, endpoint))
        watch("config-resolver", "/v1/config/service-resolver", self._on_resolvers)
        watch("catalog-services", "/v1/catalog/services", self._on_services)
        watch("catalog-nodes", "/v1/catalog/nodes", self._on_nodes)
        watch("health-state", "/v1/health/state/any", self._on_checks)
        self._health_watches = ServiceHealthWatches(
            self._site.reactor,
            self.settings.consul,
            self.settings.health_watches,
            self._on_health,
            self._failed,
            on_ok=self._answered,
            rng=self._rng,
            path=self._health_path,
            query=self._scope,
        )
        for w in self._watches:
            w.start()
        if self.settings.register:
            _sources.append(self)
        return self._first

    def _answered(self, endpoint: str) -> None:
        """Every successful answer, changed or not (a blocking query whose wait ended
        with the same index is a successful check): once the catalog has been read and
        nothing fails, its last-success time moves, so its age measures freshness and
        not how long the catalog has been quiet."""
        self.freshness.ok(endpoint)
        if self._version is not None and self.freshness.error is None:
            self._last_success_gauge.set(self._site.reactor.seconds())

    def stop(self) -> Deferred[None]:
        self._running = False
        for w in self._watches:
            w.stop()
        watches, self._health_watches = self._health_watches, None
        self._watch_pool_stopped = watches.stop() if watches is not None else None
        for call in (self._retry, self._register_call):
            if call is not None and call.active():
                call.cancel()
        if self in _sources:
            _sources.remove(self)
        return Deferred.fromCoroutine(self._stop())

    def withdraw(self) -> Deferred[None]:
        """Deregister now, before the site drains, and never register again
        (``gwcore.runtime.drain``: clients stop picking this instance first)."""
        if self in _sources:
            _sources.remove(self)
        return self.withdraw_registration()

    # --- watch handlers -------------------------------------------------------------

    async def _on_gateway(self, response: ConsulResponse) -> None:
        items = response.json() or []
        if not isinstance(items, list):
            raise ConsulError("gateway-services", "invalid", "expected a JSON list")
        linked: dict[str, dict[str, Any]] = {}
        egress: dict[str, dict[str, Any]] = {}
        for item in items:
            named = item.get("Service") or {}
            if not named.get("Name"):
                continue
            # Enterprise: the namespace and partition travel with the name, end to end.
            scoped = ServiceName(
                named["Name"],
                named.get("Namespace") or DEFAULT_NAMESPACE,
                named.get("Partition") or DEFAULT_PARTITION,
            )
            service = str(scoped)  # the plain name in the default namespace and partition
            self._names[service] = scoped
            if item.get("ServiceKind") == "destination" or item.get("IsEndpoint"):
                egress[service] = item  # no health watch: its service-defaults says where
                continue
            linked[service] = item
        self.freshness.ok("gateway-services")
        added = [s for s in linked if s not in self._linked]
        for gone in set(self._linked) - set(linked):
            self._health.pop(gone, None)
        self._linked = linked
        self._egress = egress
        known = await self._refresh(added) if added else {}
        if self._health_watches is not None:
            self._health_watches.update(linked, known)
        # Only now: the first snapshot should hold the instances of what is linked.
        self._gateway_loaded = True
        self._rebuild()

    def _on_config(self, endpoint: str, response: ConsulResponse) -> None:
        entries = response.json() or []
        if not isinstance(entries, list):
            raise ConsulError(endpoint, "invalid", "expected a JSON list")
        self._config[CONFIG_WATCHES[endpoint]] = entries
        self.freshness.ok(endpoint)
        self._rebuild()

    def _on_resolvers(self, response: ConsulResponse) -> None:
        entries = response.json() or []
        if not isinstance(entries, list):
            raise ConsulError("config-resolver", "invalid", "expected a JSON list")
        for problem in self._resolvers.update(entries):
            self._report_once(f"resolver:{problem}", f"service-resolver kept as before: {problem}")
        self.freshness.ok("config-resolver")
        self._rebuild()

    async def _on_services(self, response: ConsulResponse) -> None:
        await self._on_detector("catalog-services")

    async def _on_checks(self, response: ConsulResponse) -> None:
        await self._on_detector("health-state")

    async def _on_nodes(self, response: ConsulResponse) -> None:
        await self._on_detector("catalog-nodes")

    def _on_health(self, service: str, response: ConsulResponse) -> None:
        """A watched service's answer changed (its own blocking query)."""
        body = response.json()
        if service in self._linked:
            self._health[service] = body if isinstance(body, list) else []
            self._rebuild()

    async def _on_detector(self, endpoint: str) -> None:
        # A detector's first answer says nothing changed: the gateway-services handler
        # reads the instances of every service it links.
        if endpoint not in self._detectors_seen:
            self._detectors_seen.add(endpoint)
            return
        # Watched services see their own changes; only the overflow needs reading.
        overflow = self._health_watches.overflow if self._health_watches is not None else ()
        if overflow:
            await self._refresh(list(overflow))
            self._rebuild()

    async def _refresh(self, services: list[str]) -> dict[str, int]:
        """Read the instances of ``services`` (non-blocking, over the bounded pool);
        returns the index of each answer."""
        if self.client is None:
            return {}
        client = self.client
        pending = [
            client.get("health-service", self._health_path(s), self._scope(s)).addCallback(
                lambda r, s=s: (s, r)
            )
            for s in services
        ]
        results = await DeferredList(pending, consumeErrors=True)
        failed = False
        indexes: dict[str, int] = {}
        for ok, value in results:
            if ok:
                service, response = value
                if service in self._linked:
                    body = response.json()
                    self._health[service] = body if isinstance(body, list) else []
                    indexes[service] = response.index
            else:
                failed = True
                error = value.value
                if isinstance(error, ConsulError):
                    self._failed(error)
        if failed:
            self._schedule_retry()
        else:
            self._retry_failures = 0
            self.freshness.ok("health-service")
        return indexes

    def _schedule_retry(self) -> None:
        if not self._running or (self._retry is not None and self._retry.active()):
            return
        self._retry_failures += 1
        consul = self.settings.consul
        delay = backoff_delay(self._retry_failures, consul.retry_min, consul.retry_max, self._rng)

        def again() -> None:
            self._retry = None
            if self._running and self._linked:
                d = Deferred.fromCoroutine(self._refresh(list(self._linked)))
                d.addCallback(lambda _: self._rebuild())
                d.addErrback(lambda f: self._site.log.failure("consul_catalog retry failed", f))

        self._retry = self._site.reactor.callLater(delay, again)

    # --- building the snapshot ------------------------------------------------------

    def _report_once(self, key: str, text: str, caveat: bool = False) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        self._errors.inc(0 if caveat else 1)  # a caveat (entry in force) is a warning
        (self._site.log.warn if caveat else self._site.log.error)("consul_catalog: {p}", p=text)

    def _name(self, service: str) -> ServiceName:
        return self._names.get(service) or ServiceName(service)

    def _health_path(self, service: str) -> str:
        return health_path(self._name(service).name)

    def _scope(self, service: str) -> list[tuple[str, str]]:
        name = self._name(service)
        return scope_query(name.namespace, name.partition)

    def _linked_document(self, service: str, item: dict[str, Any]) -> dict[str, Any] | None:
        name = self._name(service)
        linked = {"Name": name.name, "Namespace": name.namespace}
        for key in ("CAFile", "CertFile", "KeyFile", "SNI"):
            if item.get(key):
                linked[key] = item[key]
        doc = {
            "Kind": "terminating-gateway",
            "Name": self.gateway,
            "Partition": name.partition,
            "Services": [linked],
        }
        _, problems = parse_documents([(f"consul:gateway-services/{service}", doc)])
        if problems:
            self._report_once(
                f"linked:{service}:{json.dumps(linked, sort_keys=True)}",
                f"linked service {service!r} left out: " + "; ".join(str(p) for p in problems),
            )
            return None
        return linked

    def build(self) -> tuple[Destination, ...]:
        """Destinations from the current answers (services whose instances are known)."""
        ready = [s for s in sorted(self._linked) if s in self._health]
        linked = [self._linked_document(s, self._linked[s]) for s in ready]
        linked += [self._linked_document(s, self._egress[s]) for s in sorted(self._egress)]
        # Linked services share the gateway's partition (Consul refuses others).
        partition = next((self._name(s).partition for s in ready), DEFAULT_PARTITION)
        entry = {
            "Kind": "terminating-gateway",
            "Name": self.gateway,
            "Partition": partition,
            "Services": [item for item in linked if item is not None],
        }
        items: list[tuple[str, Any]] = [("consul:gateway-services", entry)]
        items += [(f"consul:health/service/{s}", self._health[s]) for s in ready]
        for kind in ("service-defaults", "proxy-defaults"):
            items.append((f"consul:config/{kind}", self._config.get(kind, [])))
        docs, problems = parse_documents(items)
        destinations, unusable = build_destinations(docs, self.gateway, self._datacenter)
        destinations, egress_problems = apply_destinations(destinations, docs, self.gateway)
        unusable += egress_problems
        destinations, bad_subsets = self._resolvers.apply(destinations, docs, self._datacenter)
        for p in [*problems, *unusable, *bad_subsets]:
            self._report_once(
                f"shape:{p}", f"{'in force' if p.in_force else 'left out'}: {p}", p.in_force
            )
        wildcard = {s for s, item in self._linked.items() if item.get("FromWildcard")}
        return tuple(
            dataclasses.replace(d, from_wildcard=True) if str(d.service) in wildcard else d
            for d in destinations
        )

    def _read_mesh(self) -> MeshHttp | None:
        """The gateway partition's ``mesh`` entry; a rejected one keeps the last good."""
        docs, problems = parse_documents([("consul:config/mesh", self._config.get("mesh", []))])
        for problem in problems:
            self._report_once(f"mesh:{problem}", f"mesh entry kept as before: {problem}")
        if not problems:
            partition = next(
                (self._name(s).partition for s in sorted(self._linked)), DEFAULT_PARTITION
            )
            self._mesh_http = build_mesh_http(docs, partition)
        return self._mesh_http

    def _rebuild(self) -> None:
        configs = len(self._config) == len(CONFIG_WATCHES)
        loaded = self._gateway_loaded and configs and self._resolvers.loaded
        if not loaded or self._publish is None:
            return
        destinations = self.build()
        mesh_http = self._read_mesh()
        version = _digest((destinations, mesh_http) if mesh_http else destinations)
        if version != self._version:
            self._version = version
            self._publish(
                CatalogSnapshot(
                    source=NAME, destinations=destinations, version=version, mesh_http=mesh_http
                )
            )
        now = self._site.reactor.seconds()
        if self.freshness.error is None:
            self._last_success_gauge.set(now)
        if self._first is not None and not self._first.called:
            self._first.callback(None)
