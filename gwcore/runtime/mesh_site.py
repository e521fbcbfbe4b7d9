"""A mesh site (``role = "mesh"``): SNI pass-through between datacenters.

The same :class:`~gwcore.runtime.site.Site` steps (accept with its limits and drain; route
with the table swapped atomically; dial; forward with the idle sweep and access log), with
the pass-through driver (:mod:`gwcore.net.passthrough`) on the listener and none of the
TLS side: no certificate provider is built, no server context, no key. Routing is
:func:`gwcore.policy.mesh.route_by_sni` over

- the route table, built from the catalog's destinations, which for a mesh site are
  the services of its datacenter with their Connect endpoints (terminating gateways
  that link them, sidecars: see ``file_catalog``), and
- the mesh gateways of every datacenter (catalog ``mesh-gateway`` services, then the
  ``[sites.NAME.mesh_hop.gateways]`` addresses), dialled at their WAN address;
- with ``[sites.NAME.mesh_hop] wan_federation = true``, Consul servers' names
  (:mod:`gwcore.policy.wanfed`).

Metrics (besides the site's ``tgw_downstream_*`` and ``tgw_upstream_*``):

- ``tgw_mesh_connections_total{site,datacenter,via}``: routed connections by the
  datacenter addressed, ``via`` = ``local`` or ``mesh_gateways``;
- ``tgw_mesh_bytes_total{site,datacenter,direction}``;
- ``tgw_mesh_no_route_total{site,reason}`` (``not_a_service_sni``, ``unknown_service``,
  ``unknown_subset``, ``unknown_datacenter``);
- ``tgw_mesh_bad_clienthello_total{site,reason}`` (``not_tls``, ``not_client_hello``,
  ``malformed``, ``too_large``, ``truncated``, ``timeout``, ``no_sni``, ``invalid_sni``).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from gwcore.net.passthrough import PassthroughFactory, PassthroughProtocol
from gwcore.plugins.mesh_hop import read_settings as read_mesh_hop_settings
from gwcore.policy.clienthello import DEFAULT_MAX_LENGTH
from gwcore.policy.mesh import MeshRoute
from gwcore.runtime.forward import Forwarder
from gwcore.runtime.site import Site


class MeshForwarder(Forwarder):
    """The forward step of a mesh site: also counts bytes by the datacenter addressed."""

    def __init__(self, *args: Any, mesh_bytes: Any, site_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mesh_bytes = mesh_bytes
        self._site_name = site_name

    def flush_bytes(self, conn: Any) -> None:
        route = getattr(conn, "route", None)
        if isinstance(conn, PassthroughProtocol) and route is not None:
            up, down = conn.bytes_up - conn.reported_up, conn.bytes_down - conn.reported_down
            if up:
                self._mesh_bytes.labels(
                    site=self._site_name, datacenter=route.datacenter, direction="upstream"
                ).inc(up)
            if down:
                self._mesh_bytes.labels(
                    site=self._site_name, datacenter=route.datacenter, direction="downstream"
                ).inc(down)
        super().flush_bytes(conn)


class MeshSite(Site):
    """A site whose connections are spliced untouched (see the module docstring)."""

    max_client_hello = DEFAULT_MAX_LENGTH
    terminates_tls = False  # the router keeps the certificate-less base context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # [mesh_hop] wan_federation: route Consul servers' names (gwcore.policy.wanfed)
        self.wan_federation = read_mesh_hop_settings(self.config)[0].wan_federation
        family = self.metrics.family
        self._routed = family(
            Counter,
            "tgw_mesh_connections",
            "Connections a mesh site routed, by the datacenter addressed and how "
            "(via=local: this datacenter's Connect endpoints; via=mesh_gateways).",
            ["site", "datacenter", "via"],
        )
        self._bytes = family(
            Counter,
            "tgw_mesh_bytes",
            "Bytes a mesh site forwarded, by the datacenter addressed; direction=upstream "
            "is client to server.",
            ["site", "datacenter", "direction"],
        )
        self._no_route = family(
            Counter,
            "tgw_mesh_no_route",
            "Connections a mesh site closed for want of a route (not_a_service_sni, "
            "unknown_service, unknown_subset, unknown_datacenter).",
            ["site", "reason"],
        )
        self._bad_hello = family(
            Counter,
            "tgw_mesh_bad_clienthello",
            "Connections a mesh site dropped for their ClientHello (not_tls, "
            "not_client_hello, malformed, too_large, truncated, timeout, no_sni, invalid_sni).",
            ["site", "reason"],
        )
        self.forwarder = MeshForwarder(
            self.config,
            self.reactor,
            self.children,
            self.log,
            self,
            self.forwarder.access_log,
            lambda: self.active,
            self.listening_address,
            mesh_bytes=self._bytes,
            site_name=self.name,
        )

    def listener_factory(self) -> PassthroughFactory:
        return PassthroughFactory(self)

    # --- called by PassthroughProtocol ------------------------------------------------

    def mesh_routed(self, route: MeshRoute) -> None:
        via = "mesh_gateways" if route.remote else "local"
        self._routed.labels(site=self.name, datacenter=route.datacenter, via=via).inc()

    def mesh_no_route(self, reason: str) -> None:
        self._no_route.labels(site=self.name, reason=reason).inc()

    def mesh_bad_hello(self, reason: str) -> None:
        self._bad_hello.labels(site=self.name, reason=reason).inc()

    def describe_routes(self) -> dict[str, Any]:
        described = super().describe_routes()
        described["role"] = "mesh"
        described["subsets"] = {
            sni: {name: [str(e) for e in endpoints] for name, endpoints in d.subsets}
            for sni, d in self.router.routes
            if d.subsets
        }
        described["wan_federation"] = self.wan_federation
        described["mesh_gateways"] = {
            dc: [str(e) for e in endpoints]
            for dc, endpoints in sorted(self.catalog_view().mesh_gateways.items())
        }
        return described
