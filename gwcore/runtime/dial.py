"""Step 4 of a connection's life, *pick an endpoint and connect*.

The dialer owns the site's upstream strategies and its :class:`EndpointPicker` (balancing,
passive outlier ejection), tries endpoints in the picker's order up to
``max_connect_attempts``, and counts what happens (connect failures, retries,
ejections, unreachable services, connect time, the endpoint gauges). The protocol that
carries the bytes once connected comes from the forward step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger

from gwcore.contract.endpoint_choice import choose_endpoints
from gwcore.contract.events import EventSink, UpstreamConnected, UpstreamFailed
from gwcore.contract.metrics import GatewayMetrics, SiteChildren, service_key
from gwcore.contract.metrics_series import remove_series
from gwcore.contract.providers import UpstreamStrategy
from gwcore.net.upstream import UpstreamConnectError, choose_strategy, connect_first_available
from gwcore.policy.balancing import EndpointPicker, OutlierDetector
from gwcore.policy.config import SiteConfig
from gwcore.policy.lb import hash_key
from gwcore.policy.model import Destination, Endpoint, Health
from gwcore.policy.routes import RouteTable

if TYPE_CHECKING:
    from gwcore.net.terminator import DownstreamProtocol

CONFIG_FAILURES = frozenset({"tls_config", "no_strategy", "no_endpoints"})
"""Failure reasons that say nothing about an endpoint's health (never eject for them)."""


class Dialer:
    """The endpoint-and-connect step of one site; see the module docstring."""

    def __init__(
        self,
        config: SiteConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        children: SiteChildren,
        log: Logger,
        events: EventSink,
    ) -> None:
        self.config = config
        self.name = config.key
        self.reactor = reactor
        self.metrics = metrics
        self.children = children
        self.log = log
        self._events = events
        self.strategies: list[UpstreamStrategy] = []
        # Told of each ejection (the L7 pools retire that endpoint's connections).
        self.ejected: Callable[[Destination, Endpoint], None] = lambda destination, endpoint: None
        self.picker = EndpointPicker(
            OutlierDetector(
                config.outlier_consecutive_failures,
                config.outlier_base_ejection,
                config.outlier_max_ejection,
            )
        )

    def plan(self, conn: Any, key: str | int | None = None) -> list[Endpoint]:
        """The endpoints ``conn`` would try, in order (at most ``max_connect_attempts``);
        ``key`` overrides the connection's hash key (an L7 request's hash, or "" for
        none). Empty when no strategy serves the destination (:meth:`connect` says why)."""
        destination = conn.destination
        try:
            strategy = choose_strategy(self.strategies, destination)
        except UpstreamConnectError:
            return []
        return self._order(conn, self._dialled(strategy, destination), key)

    def usable(self, conn: Any) -> list[Endpoint]:
        """Every endpoint a new connection of ``conn`` may be sent to now, in catalog
        order: not critical, not ejected (unless all are), kept by the
        ``tgw_choose_endpoint`` addons. Empty when no strategy serves it."""
        destination = conn.destination
        try:
            strategy = choose_strategy(self.strategies, destination)
        except UpstreamConnectError:
            return []
        destination = self._dialled(strategy, destination)
        endpoints = self.picker.usable(destination, self.reactor.seconds())
        if self._events.has_listeners("tgw_choose_endpoint"):
            endpoints = choose_endpoints(self._events, conn.info, destination, endpoints)
        return endpoints

    def dialled_endpoints(self, destination: Destination) -> Sequence[Endpoint]:
        """The addresses a connection to ``destination`` dials (a strategy's own, as
        the mesh-gateway hop's, else the destination's endpoints)."""
        try:
            strategy = choose_strategy(self.strategies, destination)
        except UpstreamConnectError:
            return destination.endpoints
        return self._dialled(strategy, destination).endpoints

    @staticmethod
    def _dialled(strategy: UpstreamStrategy, destination: Destination) -> Destination:
        # A strategy may dial other addresses than the destination's own (the mesh-gateway
        # hop dials mesh gateways): balancing and ejection then apply to those.
        dialled = getattr(strategy, "endpoints_for", None)
        if dialled is not None:
            return replace(destination, endpoints=tuple(dialled(destination)))
        return destination

    def _order(self, conn: Any, destination: Destination, key: str | int | None) -> list[Endpoint]:
        endpoints = self.picker.candidates(
            destination,
            self.reactor.seconds(),
            key=hash_key(destination, conn) if key is None else key,
            passing_first=self.config.health_order == "passing_first",
        )
        if self._events.has_listeners("tgw_choose_endpoint"):
            # addons may reorder (gwcore.contract.endpoint_choice)
            endpoints = choose_endpoints(self._events, conn.info, destination, endpoints)
        return endpoints[: self.config.max_connect_attempts]

    def connect(
        self,
        conn: DownstreamProtocol,
        factory_for: Callable[[UpstreamStrategy], Any],
        endpoints: Sequence[Endpoint] | None = None,
    ) -> Deferred[Any]:
        """Connect ``conn``'s destination; the protocol comes from ``factory_for(strategy)``
        (the forward step's, which may depend on the strategy chosen). ``endpoints``: the
        order :meth:`plan` gave (an L7 request chose them), else the connection's own."""
        destination = conn.destination
        assert destination is not None and conn.info is not None
        service = destination.name
        try:
            strategy = choose_strategy(self.strategies, destination)
        except UpstreamConnectError as e:
            self.log.warn(
                "refusing {client} -> {service}: {detail}",
                client=conn.info.client_address,
                service=service,
                detail=e.detail,
            )
            return fail(e)
        destination = self._dialled(strategy, destination)
        info = conn.info
        if endpoints is None:
            endpoints = self._order(conn, destination, None)
        timeout = destination.connect_timeout or self.config.connect_timeout
        of = self.children.of

        def on_failure(endpoint: Endpoint, reason: str, detail: str, final: bool) -> None:
            of(self.metrics.upstream_connect_failures, destination, reason=reason).inc()
            if reason not in CONFIG_FAILURES:
                ejected = self.picker.failed(destination, endpoint, self.reactor.seconds())
                if ejected is not None:
                    of(self.metrics.upstream_ejections, destination).inc()
                    self.ejected(destination, endpoint)
                    self.log.warn(
                        "endpoint {endpoint} of {service} ejected for {seconds:g}s "
                        "after consecutive connect failures",
                        endpoint=str(endpoint),
                        service=service,
                        seconds=ejected,
                    )
                self.export_endpoints(destination)  # ejected, or failing every connect
            self.log.info(
                "upstream {endpoint} of {service} failed: {reason} ({detail})",
                endpoint=str(endpoint),
                service=service,
                reason=reason,
                detail=detail,
            )
            if self._events.has_listeners("tgw_upstream_failed"):
                self._events.dispatch(
                    "tgw_upstream_failed",
                    UpstreamFailed(
                        conn=info,
                        destination=destination,
                        endpoint=endpoint,
                        reason=reason,
                        final=final,
                    ),
                )

        def connected(result: tuple[Any, Endpoint, int, float]) -> tuple[Any, Endpoint, int, float]:
            _, endpoint, attempts, seconds = result
            if self.picker.succeeded(destination, endpoint):
                self.export_endpoints(destination)  # healthy again
            self.picker.opened(destination, endpoint)
            if attempts > 1:
                of(self.metrics.upstream_retries, destination).inc(attempts - 1)
            self.children.service(destination).upstream_connect_seconds.observe(seconds)
            if self._events.has_listeners("tgw_upstream_connected"):
                self._events.dispatch(
                    "tgw_upstream_connected",
                    UpstreamConnected(
                        conn=info,
                        destination=destination,
                        endpoint=endpoint,
                        connect_seconds=seconds,
                        attempts=attempts,
                    ),
                )
            return result

        def unavailable(reason: Any) -> Any:
            if len(endpoints) > 1:
                of(self.metrics.upstream_retries, destination).inc(len(endpoints) - 1)
            if not reason.check(CancelledError):
                of(self.metrics.upstream_unavailable, destination).inc()
                self.log.warn(
                    "no endpoint of {service} reachable: {detail}",
                    service=service,
                    detail=str(reason.value),
                )
            return reason

        factory = factory_for(strategy)
        d = connect_first_available(strategy, destination, endpoints, factory, timeout, on_failure)
        return d.addCallbacks(connected, unavailable)

    def closed(self, conn: DownstreamProtocol) -> None:
        """``conn`` ended: its endpoint has one connection less (least-connections)."""
        if conn.upstream is not None and conn.endpoint is not None and conn.destination is not None:
            self.picker.closed(conn.destination, conn.endpoint)

    def routes_installed(
        self, old: RouteTable, routes: RouteTable, destinations: Iterable[Destination]
    ) -> None:
        """Forget balancing state and gauges of services no longer routed; export the rest."""
        self.picker.prune(destinations)
        gone = {service_key(d) for _, d in old} - {service_key(d) for _, d in routes}
        for service in gone:
            self.children.forget(service)
            for state in ("healthy", "ejected", "total"):
                remove_series(self.metrics.upstream_endpoints, self.name, *service, state)
        for _, destination in routes:
            self.export_endpoints(destination)

    def export_endpoints(self, destination: Destination) -> None:
        if destination.subset or destination.egress:
            return  # a subset: the service's route reports; a destination: one per address
        now = self.reactor.seconds()
        live = [e for e in destination.endpoints if e.health is not Health.CRITICAL]
        usable = self.picker.usable(destination, now)
        ejected = len(live) - len(usable) if len(usable) < len(live) else 0
        gauge, of = self.metrics.upstream_endpoints, self.children.of
        of(gauge, destination, state="total").set(len(destination.endpoints))
        healthy = len(self.picker.healthy(destination, now))
        of(gauge, destination, state="healthy").set(healthy)
        of(gauge, destination, state="ejected").set(ejected)
