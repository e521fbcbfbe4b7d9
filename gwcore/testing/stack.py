"""The plugin author's test harness: payload builders and a socket-free plugin stack.

Re-exported by :mod:`gwcore.testing` (import from there). Documented in
``docs/hooks.md`` ("Testing plugins").

- Builders (:func:`connection_info`, :func:`authz_request`, :func:`client_connected`,
  ... one per event payload) fill every field with a plausible value; pass keywords
  to change any of them.
- :func:`load_stack` loads a site's plugin stack exactly as the gateway does (the
  same resolution, hook checks, config validation, provider collection and shape
  checks) against a :class:`~gwcore.testing.FakeSite`, and dispatches events to it.
- :func:`metric_value` reads one sample of a metric.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gwcore.contract.events import (
    AuthorizationDone,
    ClientConnected,
    ClientHelloSeen,
    ConnectionClosed,
    ConnectionInfo,
    EndpointChoice,
    HandshakeDone,
    RoutesChanged,
    SiteStarted,
    UpstreamConnected,
    UpstreamFailed,
)
from gwcore.contract.http_addons import HttpAddons
from gwcore.contract.http_flow import Headers, HttpFlow, HttpRequest, HttpResponse
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.plugin_checks import engine_answer
from gwcore.contract.plugin_host import PluginLoadError, PluginStack
from gwcore.contract.providers import AuthzRequest
from gwcore.policy.config import SiteConfig, parse_config
from gwcore.policy.decision import combine, failure
from gwcore.policy.model import Decision, Destination, Endpoint, ServiceName, SpiffeID, Verdict

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
SITE = "main"

EVENT_HOOK_OF: dict[type, str] = {
    SiteStarted: "tgw_site_started",
    RoutesChanged: "tgw_routes_changed",
    ClientConnected: "tgw_client_connected",
    ClientHelloSeen: "tgw_tls_clienthello",
    HandshakeDone: "tgw_handshake_done",
    AuthorizationDone: "tgw_authorized",
    EndpointChoice: "tgw_choose_endpoint",
    UpstreamConnected: "tgw_upstream_connected",
    UpstreamFailed: "tgw_upstream_failed",
    ConnectionClosed: "tgw_connection_closed",
}
"""The event hook each payload type is dispatched to."""


# --- builders --------------------------------------------------------------------------


def identity(service: str = "web", datacenter: str = "dc1", **kw: Any) -> SpiffeID:
    """A client's SPIFFE identity in :data:`TRUST_DOMAIN`."""
    return SpiffeID(kw.pop("trust_domain", TRUST_DOMAIN), "default", datacenter, service, **kw)


def destination(service: str = "billing", *endpoints: tuple[str, int], **kw: Any) -> Destination:
    """A destination in ``dc1`` with the given ``(address, port)`` endpoints."""
    eps = tuple(Endpoint(a, p) for a, p in endpoints) or (Endpoint("127.0.0.1", 8080),)
    return Destination(ServiceName(service), kw.pop("datacenter", "dc1"), eps, **kw)


def sni_of(service: str = "billing") -> str:
    """The SNI a mesh client sends for ``service`` in ``dc1``."""
    return f"{service}.default.dc1.internal.{TRUST_DOMAIN}"


def connection_info(**kw: Any) -> ConnectionInfo:
    """A downstream connection of site ``main`` from 127.0.0.1:50000."""
    values: dict[str, Any] = {
        "site": SITE,
        "connection_id": 1,
        "client_address": "127.0.0.1",
        "client_port": 50000,
        "started": time.time(),
    }
    return ConnectionInfo(**{**values, **kw})


def authz_request(source: str = "web", service: str = "billing", **kw: Any) -> AuthzRequest:
    """What an engine is asked when ``source`` connects to ``service``."""
    values: dict[str, Any] = {
        "site": SITE,
        "gateway_name": "legacy-gw",
        "datacenter": "dc1",
        "source": identity(source),
        "destination": destination(service),
        "sni": sni_of(service),
        "client_address": "127.0.0.1",
        "client_port": 50000,
        "gateway_address": "127.0.0.1",
        "gateway_port": 8443,
        "requested_server_name": sni_of(service),
    }
    return AuthzRequest(**{**values, **kw})


def client_connected(**kw: Any) -> ClientConnected:
    return ClientConnected(conn=kw.pop("conn", None) or connection_info(**kw))


def clienthello_seen(service: str | None = "billing", **kw: Any) -> ClientHelloSeen:
    """A ClientHello for ``service`` (``None``: no usable SNI, no destination)."""
    values: dict[str, Any] = {
        "conn": connection_info(),
        "sni": sni_of(service) if service else None,
        "destination": destination(service) if service else None,
    }
    return ClientHelloSeen(**{**values, **kw})


def handshake_done(source: str = "web", service: str = "billing", **kw: Any) -> HandshakeDone:
    values: dict[str, Any] = {
        "conn": connection_info(),
        "sni": sni_of(service),
        "destination": destination(service),
        "identity": identity(source),
        "tls_version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
    }
    return HandshakeDone(**{**values, **kw})


def authorization_done(
    source: str = "web", service: str = "billing", **kw: Any
) -> AuthorizationDone:
    values: dict[str, Any] = {
        "conn": connection_info(),
        "identity": identity(source),
        "destination": destination(service),
        "decision": Decision(Verdict.ALLOW, "intentions", "test"),
    }
    return AuthorizationDone(**{**values, **kw})


def endpoint_choice(service: str = "billing", *endpoints: tuple[str, int]) -> EndpointChoice:
    """The endpoints about to be tried for ``service`` (default: two on 127.0.0.1)."""
    eps = endpoints or (("127.0.0.1", 8080), ("127.0.0.1", 8081))
    dest = destination(service, *eps)
    return EndpointChoice(conn=connection_info(), destination=dest, candidates=dest.endpoints)


def upstream_connected(service: str = "billing", **kw: Any) -> UpstreamConnected:
    values: dict[str, Any] = {
        "conn": connection_info(),
        "destination": destination(service),
        "endpoint": Endpoint("127.0.0.1", 8080),
        "connect_seconds": 0.001,
        "attempts": 1,
    }
    return UpstreamConnected(**{**values, **kw})


def upstream_failed(service: str = "billing", **kw: Any) -> UpstreamFailed:
    values: dict[str, Any] = {
        "conn": connection_info(),
        "destination": destination(service),
        "endpoint": Endpoint("127.0.0.1", 8080),
        "reason": "refused",
        "final": True,
    }
    return UpstreamFailed(**{**values, **kw})


def connection_closed(record: dict[str, Any] | None = None, **kw: Any) -> ConnectionClosed:
    """A closed connection; ``record`` is merged into a typical allowed access record."""
    conn = kw.pop("conn", None) or connection_info()
    base = {
        "site": conn.site,
        "connection_id": conn.connection_id,
        "source": "web",
        "destination": "billing",
        "decision": "allow",
        "close_cause": "client_closed",
        "bytes_in": 0,
        "bytes_out": 0,
        "annotations": conn.annotations,
    }
    return ConnectionClosed(conn=conn, record={**base, **(record or {})})


def site_started(**kw: Any) -> SiteStarted:
    return SiteStarted(**{"site": SITE, "address": "127.0.0.1:8443", **kw})


def routes_changed(*services: str, **kw: Any) -> RoutesChanged:
    routes = tuple(sorted(sni_of(s) for s in (services or ("billing",))))
    return RoutesChanged(**{"site": SITE, "routes": routes, "version": "1", **kw})


# --- metrics ---------------------------------------------------------------------------


def http_flow(
    method: str = "GET",
    path: str = "/",
    *,
    source: str = "web",
    service: str = "billing",
    headers: Sequence[tuple[str, str]] = (),
    **kw: Any,
) -> HttpFlow:
    """A request from ``source`` to the http destination ``service``, allowed by the
    engines (``authority`` is the service name; ``headers`` go after ``host``)."""
    request = HttpRequest(
        method, path, authority=service, headers=Headers([("host", service), *headers])
    )
    values: dict[str, Any] = {
        "request": request,
        "source": identity(source),
        "destination": destination(service, protocol="http"),
        "site": SITE,
        "conn": connection_info(),
        "decision": Decision(Verdict.ALLOW, "intentions", "test"),
    }
    return HttpFlow(**{**values, **kw})


def http_response(status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> HttpResponse:
    """An upstream's response head, to set as ``flow.response`` before
    ``responseheaders``."""
    return HttpResponse(status, Headers(headers))


def metric_value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    """One sample (``0.0`` when absent): ``metric_value(m, "my_total", site="main")``.
    Counters are read by their sample name, with ``_total``."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- a plugin stack without sockets ----------------------------------------------------


@dataclass
class LoadedStack:
    """A site's plugin stack loaded by :func:`load_stack`, its providers collected."""

    config: SiteConfig
    stack: PluginStack
    site: Any
    """The :class:`~gwcore.testing.FakeSite` the providers were built with."""
    sources: list[Any] = field(default_factory=list)
    certificates: list[Any] = field(default_factory=list)
    engines: list[Any] = field(default_factory=list)
    strategies: list[Any] = field(default_factory=list)

    def dispatch(self, event: Any) -> Any:
        """Call the event's hook on every plugin, in stack order (a raising addon is
        logged and counted, as in the gateway); returns the event."""
        hook = EVENT_HOOK_OF[type(event)]
        self.stack.dispatch(hook, event, self.site.log, self.site.metrics)
        return event

    @property
    def http(self) -> HttpAddons:
        """The site's HTTP addon hooks as the L7 driver calls them (stack order, answers,
        fail-closed on a raise): ``loaded.http.request_headers(flow)``..."""
        return HttpAddons(self.stack, self.site.log, self.site.metrics, self.config.key)

    def decide(self, request: AuthzRequest) -> Decision:
        """The site's decision for ``request`` from engines that answer at once (an engine
        returning a Deferred must be tested by firing it; this raises then).

        As in the site, an engine that raises or answers something that is not a
        :class:`Decision` (``None``, a bool) is a deny naming the engine and the error:
        the harness fails closed exactly where the gateway does."""
        answers = []
        for engine in self.engines:
            try:
                answer = engine_answer(engine, request)
            except Exception as e:
                answers.append(failure(engine.name, f"{type(e).__name__}: {e}"))
                continue
            if not isinstance(answer, Decision):
                raise AssertionError(f"engine {engine.name!r} did not answer at once")
            answers.append(answer)
        return combine(answers, self.config.default_policy)

    def done(self) -> None:
        """Stop the site's addons (``done()``), as when the site stops."""
        self.stack.addons_done(self.site.log)

    def metric(self, name: str, **labels: str) -> float:
        """:func:`metric_value` with ``site`` filled in."""
        return metric_value(self.site.metrics, name, **{"site": self.config.key, **labels})


def load_stack(
    tmp_path: Path,
    plugins: Sequence[str | ModuleType],
    sections: dict[str, dict[str, Any]] | None = None,
    *,
    plugin_paths: Sequence[str | Path] = (),
    **site: Any,
) -> LoadedStack:
    """Load the stack ``plugins`` (names, drop-in paths, or imported modules, which are
    loaded from their file) for site ``main`` configured with ``sections``, as the
    gateway would: the config is parsed and every plugin validates its section, every
    hook implementation is checked, addons are loaded (``load(ctx)``, ``configure``), and
    each provider hook is collected and checked against its protocol. Any problem
    raises :class:`PluginLoadError` with the message the gateway would give. Nothing
    listens; time is a ``task.Clock``."""
    from gwcore.testing.fakes import FakeSite

    names = [str(Path(p.__file__)) if isinstance(p, ModuleType) else p for p in plugins]
    table: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "name": "legacy-gw",
        "datacenter": "dc1",
        "trust_domain": TRUST_DOMAIN,
        "plugins": names,
        **site,
        **(sections or {}),
    }
    gateway = {"state_dir": "state", "plugin_paths": [str(p) for p in plugin_paths]}
    try:
        config = parse_config(
            {"gateway": gateway, "sites": {SITE: table}}, str(tmp_path / "tgw.toml"), tmp_path
        )
    except Exception as e:  # a config error reads like check-config's
        raise PluginLoadError(str(e)) from e
    site_config = config.site(SITE)
    stack = PluginStack(site_config, config)
    problems = stack.validate()
    if problems:
        raise PluginLoadError("\n".join(str(p) for p in problems))
    fake = FakeSite(site_config, tmp_path / "state")
    loaded = LoadedStack(site_config, stack, fake)
    stack.load_addons(fake)  # as the site does first when it starts
    loaded.sources = stack.collect("tgw_catalog_sources", site=fake)
    loaded.certificates = stack.collect("tgw_certificate_providers", site=fake)
    loaded.engines = stack.collect("tgw_authorization_engines", site=fake)
    loaded.strategies = stack.collect("tgw_upstream_strategies", site=fake)
    return loaded
