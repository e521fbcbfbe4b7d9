"""The ``consul_catalog`` plugin on a mesh site: what Consul's own mesh gateway learns.

Consul's mesh gateway (``agent/proxycfg/mesh_gateway.go``) watches, and so does this
source, every watch a blocking query unless said otherwise:

- ``/v1/catalog/services``: the services of the site's datacenter (``ServiceList``);
- ``/v1/health/connect/<svc>`` for each of them (``connect-service:<svc>``): its Connect
  endpoints, i.e. its sidecar proxies, its Connect-native instances and the instances of
  every terminating gateway that links it. Each becomes the route of
  ``<svc>.<ns>.<dc>.internal.<td>``; a service with no Connect endpoint has none. At most
  ``health_watches`` services are watched so; the others (the overflow) are read again
  whenever one of the change detectors moves: ``/v1/catalog/services``,
  ``/v1/catalog/nodes``, ``/v1/health/state/any`` (an instance, a node, a check) and
  ``/v1/config/terminating-gateway`` (a link);
- ``/v1/config/service-resolver`` (subset routes, as ``file_catalog`` builds them for
  mesh sites), ``/v1/config/service-defaults`` and ``/v1/config/proxy-defaults``
  (protocols, for ``/routes``: a service's ``Protocol``, else its partition's
  ``proxy-defaults`` ``Config.protocol``, else tcp, as Consul resolves it);
- ``/v1/catalog/datacenters`` (not a blocking query in Consul: polled every
  ``datacenters_interval``, 30 s as Consul's ``MaxAge``), then for every other
  datacenter ``/v1/health/service/<mesh_gateway_service>?dc=<dc>`` (Consul's
  ``mesh-gateway:<dc>`` service dump of kind ``mesh-gateway``): its mesh gateways,
  dialled at their WAN address;
- with ``[sites.NAME.mesh_hop] wan_federation = true`` (Consul: the gateway's
  ``consul-wan-federation`` meta), ``/v1/internal/federation-states/mesh-gateways`` too;
  a datacenter's own answer wins over its federation state, as in Consul's
  ``GatewayKeys``.

When an answer fails or is unusable the last good state stays in force, counted in
``tgw_catalog_errors_total`` and ``tgw_consul_errors_total``; ``/ready`` names the
endpoint (``tgw_consul_staleness_seconds``), and recovery is automatic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList

from gwcore.net.consul import (
    BlockingWatch,
    ConsulError,
    ConsulResponse,
    acquire_client,
    backoff_delay,
)
from gwcore.net.consul_watch import ServiceHealthWatches
from gwcore.plugins.consul_resolvers import ConsulResolvers
from gwcore.plugins.consul_source import ConsulSource
from gwcore.plugins.mesh_hop import read_settings as read_mesh_hop_settings
from gwcore.policy.consul_build import (
    build_connect_destinations,
    build_mesh_gateways,
    protocols_of,
)
from gwcore.policy.consul_shapes import CatalogDocuments, parse_documents
from gwcore.policy.model import CatalogSnapshot, ServiceName

if TYPE_CHECKING:
    from gwcore.contract.providers import SiteContext

NAME = "consul_catalog"


def connect_path(service: str) -> str:
    return f"/v1/health/connect/{quote(service, safe='')}"


def _dedupe(answers: list[Any]) -> list[Any]:
    """One copy of each instance (a gateway instance serves several services)."""
    seen: dict[tuple[str, str], Any] = {}
    for node in answers:
        if isinstance(node, dict):
            key = (
                str((node.get("Node") or {}).get("Node")),
                str((node.get("Service") or {}).get("ID")),
            )
            seen.setdefault(key, node)
    return list(seen.values())


class ConsulMeshSource(ConsulSource):
    """A :class:`~gwcore.contract.providers.CatalogSource` for a mesh site (module docstring)."""

    name = NAME
    registration_kind = "mesh-gateway"

    def __init__(self, site: SiteContext, settings: Any, pending: list[Any]) -> None:
        super().__init__(site, settings)
        self._pending = pending  # consul_catalog's sources waiting for their listener
        self._wan_federation = read_mesh_hop_settings(site.config)[0].wan_federation
        self._services: list[str] | None = None
        self._connect: dict[str, list[Any]] = {}
        self._defaults: list[Any] | None = None
        self._proxy_defaults: list[Any] | None = None
        self._resolvers = ConsulResolvers()
        self._remote: dict[str, list[Any]] = {}  # datacenter -> its mesh gateways' answer
        self._remote_watches: dict[str, BlockingWatch] = {}
        self._remote_failed: set[str] = set()  # datacenters that failed before answering
        self._datacenters: list[str] | None = None
        self._fedstates: dict[str, Any] = {}
        # Read (or failed) once: only then is a first snapshot complete.
        self._fedstates_tried = not self._wan_federation
        self._connect_watches: ServiceHealthWatches | None = None
        self._poll: Any = None

    # --- CatalogSource ------------------------------------------------------------

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> Deferred[None]:
        self._publish = publish
        self._running = True
        self.client = acquire_client(self._site.reactor, self.settings.consul)
        self._first = Deferred()
        self._watch("catalog-services", "/v1/catalog/services", self._on_services)
        self._watch("health-state", "/v1/health/state/any", self._on_checks)
        self._watch("catalog-nodes", "/v1/catalog/nodes", self._on_nodes)
        self._watch("config-terminating", "/v1/config/terminating-gateway", self._on_links)
        self._watch("config", "/v1/config/service-defaults", self._on_defaults)
        self._watch("config-proxy-defaults", "/v1/config/proxy-defaults", self._on_proxy_defaults)
        self._watch("config-resolver", "/v1/config/service-resolver", self._on_resolvers)
        if self._wan_federation:
            path = "/v1/internal/federation-states/mesh-gateways"
            self._watch("federation-states", path, self._on_fedstates, self._on_fedstates_failed)
        self._connect_watches = ServiceHealthWatches(
            self._site.reactor,
            self.settings.consul,
            self.settings.health_watches,
            self._on_connect,
            self._failed,
            on_ok=self.freshness.ok,
            rng=self._rng,
            path=connect_path,
        )
        for w in self._watches:
            w.start()
        self._poll_datacenters()
        if self.settings.register:
            self._pending.append(self)
        return self._first

    def _watch(
        self,
        endpoint: str,
        path: str,
        on_change: Callable[[ConsulResponse], Any],
        on_error: Callable[[ConsulError], None] | None = None,
    ) -> None:
        w = BlockingWatch(
            self.client,
            endpoint,
            path,
            on_change,
            on_error or self._failed,
            on_ok=self.freshness.ok,
            rng=self._rng,
        )
        self._watches.append(w)

    def stop(self) -> Deferred[None]:
        self._running = False
        for w in [*self._watches, *self._remote_watches.values()]:
            w.stop()
        watches, self._connect_watches = self._connect_watches, None
        self._watch_pool_stopped = watches.stop() if watches is not None else None
        for call in (self._poll, self._retry, self._register_call):
            if call is not None and call.active():
                call.cancel()
        if self in self._pending:
            self._pending.remove(self)
        return Deferred.fromCoroutine(self._stop())

    def withdraw(self) -> Deferred[None]:
        """Deregister now, before the site drains (``gwcore.runtime.drain``)."""
        if self in self._pending:
            self._pending.remove(self)
        return self.withdraw_registration()

    # --- answers ------------------------------------------------------------------

    def _expect(self, response: ConsulResponse, endpoint: str, kind: type) -> Any:
        body = response.json()
        if not isinstance(body, kind):
            raise ConsulError(endpoint, "invalid", f"expected a JSON {kind.__name__}")
        return body

    async def _on_services(self, response: ConsulResponse) -> None:
        services = sorted(self._expect(response, "catalog-services", dict))
        known: dict[str, int] = {}
        added = [s for s in services if s not in self._connect]
        for gone in set(self._connect) - set(services):
            del self._connect[gone]
        self._services = services
        if added:
            known = await self._read_connect(added)
        if self._connect_watches is not None:
            self._connect_watches.update(services, known)
        await self._on_detector("catalog-services")

    async def _on_checks(self, response: ConsulResponse) -> None:
        await self._on_detector("health-state")

    async def _on_nodes(self, response: ConsulResponse) -> None:
        await self._on_detector("catalog-nodes")

    async def _on_links(self, response: ConsulResponse) -> None:
        await self._on_detector("config-terminating")

    async def _on_detector(self, endpoint: str) -> None:
        # The first answer of a detector says nothing new; watched services see their
        # own changes, only the overflow needs reading again.
        first = endpoint not in self._detectors_seen
        self._detectors_seen.add(endpoint)
        overflow = self._connect_watches.overflow if self._connect_watches is not None else ()
        if overflow and not first:
            await self._read_connect(list(overflow))
        self._rebuild()

    def _on_connect(self, service: str, response: ConsulResponse) -> None:
        if self._services is not None and service in self._services:
            self._connect[service] = self._expect(response, "health-connect", list)
            self._rebuild()

    async def _read_connect(self, services: list[str]) -> dict[str, int]:
        """Read the Connect endpoints of ``services`` now (non-blocking)."""
        if self.client is None:
            return {}
        client = self.client
        pending = [
            client.get("health-service", connect_path(s)).addCallback(lambda r, s=s: (s, r))
            for s in services
        ]
        indexes: dict[str, int] = {}
        failed = False
        for ok, value in await DeferredList(pending, consumeErrors=True):
            body = value[1].json() if ok else None
            if not isinstance(body, list):
                failed = True
                error = value.value if not ok else None
                if not isinstance(error, ConsulError):
                    error = ConsulError("health-service", "invalid", "expected a JSON list")
                self._failed(error)
                continue
            service, response = value
            if self._services is not None and service in self._services:
                self._connect[service] = body
                indexes[service] = response.index
        if failed:
            self._schedule_retry()
        else:
            self._retry_failures = 0
            self.freshness.ok("health-service")
        return indexes

    def _schedule_retry(self) -> None:
        """Read again, with back-off, what a failed read left unknown (and the overflow,
        which no watch of its own covers)."""
        if not self._running or (self._retry is not None and self._retry.active()):
            return
        self._retry_failures += 1
        consul = self.settings.consul
        delay = backoff_delay(self._retry_failures, consul.retry_min, consul.retry_max, self._rng)

        def again() -> None:
            self._retry = None
            overflow = self._connect_watches.overflow if self._connect_watches else ()
            unread = [s for s in self._services or () if s not in self._connect]
            wanted = sorted({*overflow, *unread})
            if self._running and wanted:
                d = Deferred.fromCoroutine(self._read_connect(wanted))
                d.addCallback(lambda _: self._rebuild())
                d.addErrback(lambda f: self._site.log.failure("consul_catalog retry failed", f))

        self._retry = self._site.reactor.callLater(delay, again)

    def _on_defaults(self, response: ConsulResponse) -> None:
        self._defaults = self._expect(response, "config", list)
        self._rebuild()

    def _on_proxy_defaults(self, response: ConsulResponse) -> None:
        self._proxy_defaults = self._expect(response, "config-proxy-defaults", list)
        self._rebuild()

    def _on_resolvers(self, response: ConsulResponse) -> None:
        entries = self._expect(response, "config-resolver", list)
        for problem in self._resolvers.update(entries):
            self._report_once(f"resolver:{problem}", f"service-resolver kept as before: {problem}")
        self._rebuild()

    def _on_fedstates(self, response: ConsulResponse) -> None:
        self._fedstates = self._expect(response, "federation-states", dict)
        self._fedstates_tried = True
        self._rebuild()

    def _on_fedstates_failed(self, error: ConsulError) -> None:
        self._fedstates_tried = True  # the datacenters' own answers may do without
        self._failed(error)
        self._rebuild()

    # --- other datacenters ----------------------------------------------------------

    def _poll_datacenters(self) -> None:
        self._poll = None
        if not self._running or self.client is None:
            return
        d = self.client.get("catalog-datacenters", "/v1/catalog/datacenters")
        d.addCallback(self._on_datacenters)
        d.addErrback(lambda f: self._failed(f.value) if f.check(ConsulError) else f)
        d.addErrback(lambda f: self._site.log.failure("consul_catalog datacenters", f))
        d.addBoth(self._next_poll)

    def _next_poll(self, _: Any) -> None:
        if self._running:
            interval = self.settings.datacenters_interval
            self._poll = self._site.reactor.callLater(interval, self._poll_datacenters)

    def _on_datacenters(self, response: ConsulResponse) -> None:
        body = response.json()
        if not isinstance(body, list) or not all(isinstance(dc, str) for dc in body):
            raise ConsulError("catalog-datacenters", "invalid", "expected a JSON list of names")
        self.freshness.ok("catalog-datacenters")
        others = sorted({dc for dc in body if dc and dc != self._datacenter})
        for gone in set(self._remote_watches) - set(others):
            self._remote_watches.pop(gone).stop()
            self._remote.pop(gone, None)
            self._remote_failed.discard(gone)
            self.freshness.ok(f"mesh-gateways:{gone}")  # its failure is no staleness now
        for dc in others:
            if dc not in self._remote_watches:
                service = quote(self.settings.mesh_gateway_service, safe="")
                w = BlockingWatch(
                    self.client,
                    f"mesh-gateways:{dc}",  # one's answer must not clear another's failure
                    f"/v1/health/service/{service}",
                    lambda r, dc=dc: self._on_remote(dc, r),
                    lambda e, dc=dc: self._on_remote_failed(dc, e),
                    query=[("dc", dc)],
                    on_ok=self.freshness.ok,
                    rng=self._rng,
                )
                self._remote_watches[dc] = w
                w.start()
        self._datacenters = others
        self._rebuild()

    def _on_remote_failed(self, datacenter: str, error: ConsulError) -> None:
        # Another datacenter that does not answer must not hold back this one's routes.
        self._remote_failed.add(datacenter)
        self._failed(error)
        self._rebuild()

    def _on_remote(self, datacenter: str, response: ConsulResponse) -> None:
        if datacenter in self._remote_watches:
            self._remote[datacenter] = self._expect(response, "mesh-gateways", list)
            self._rebuild()

    # --- building the snapshot ----------------------------------------------------

    def _report_once(self, key: str, text: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self._errors.inc()
            self._site.log.error("consul_catalog: {problem}", problem=text)

    def _loaded(self) -> bool:
        local = self._services is not None and all(s in self._connect for s in self._services)
        remote = self._datacenters is not None and all(
            dc in self._remote or dc in self._remote_failed for dc in self._datacenters
        )
        settings = (
            self._defaults is not None
            and self._proxy_defaults is not None
            and self._resolvers.loaded
        )
        return local and remote and settings and self._fedstates_tried

    def build(self) -> CatalogSnapshot:
        problems: list[Any] = []
        answers: dict[ServiceName, CatalogDocuments] = {}
        for service in self._services or ():
            docs, found = parse_documents(
                [(f"consul:health/connect/{service}", self._connect[service])]
            )
            answers[ServiceName(service)] = docs
            problems += found
        every, _ = parse_documents(
            [("consul:health/connect", _dedupe([n for a in self._connect.values() for n in a]))]
        )
        defaults, found = parse_documents(
            [
                ("consul:config/service-defaults", self._defaults or []),
                ("consul:config/proxy-defaults", self._proxy_defaults or []),
            ]
        )
        problems += found
        protocol_of = protocols_of(defaults)
        protocols = {name: protocol_of(name) for name in answers}
        built = build_connect_destinations(answers, self._datacenter, protocols)
        destinations, bad_subsets = self._resolvers.apply(built, every, self._datacenter)
        gateways = self._gateways(problems)
        for problem in [*problems, *bad_subsets]:
            self._report_once(f"shape:{problem}", f"left out: {problem}")
        version = hashlib.sha256(repr((destinations, gateways)).encode()).hexdigest()[:16]
        return CatalogSnapshot(
            source=NAME, destinations=destinations, version=version, mesh_gateways=gateways
        )

    def _gateways(self, problems: list[Any]) -> Any:
        items: list[tuple[str, Any]] = []
        for dc in sorted(self._remote):
            items.append((f"consul:health/service/mesh-gateway?dc={dc}", self._remote[dc]))
        answered = {dc for dc, nodes in self._remote.items() if nodes}
        for dc, nodes in sorted(self._fedstates.items()):
            if dc != self._datacenter and dc not in answered and isinstance(nodes, list):
                items.append((f"consul:federation-states/{dc}", nodes))
        docs, found = parse_documents(items)
        problems += found
        return tuple(
            g
            for g in build_mesh_gateways(docs, self._datacenter)
            if g.datacenter != self._datacenter
        )

    def _rebuild(self) -> None:
        if not self._loaded() or self._publish is None:
            return
        snapshot = self.build()
        if snapshot.version != self._version:
            self._version = snapshot.version
            self._publish(snapshot)
        if self.freshness.error is None:
            self._last_success_gauge.set(self._site.reactor.seconds())
        if self._first is not None and not self._first.called:
            self._first.callback(None)
