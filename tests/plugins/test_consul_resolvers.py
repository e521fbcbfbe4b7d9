"""service-resolver entries from Consul (``/v1/config/service-resolver``, blocking) at a
terminating site fed by consul_catalog, against the Consul double (which stores and
serves config entries as the real agent does): subset routes, their live removal when
the resolver is deleted (Consul's deleted-resolver case), and a resolver tgw cannot
read keeping its last good state."""

from __future__ import annotations

import pytest_twisted

from gwcore.testing.consul import ConsulDouble
from tests.harness import GATEWAY, hello, in_thread, request, sni_for
from tests.plugins.test_consul_gateway import _refused, cgw, consul
from tests.plugins.test_destinations import defaults, dsni
from tests.plugins.test_tgw_subsets import RESOLVER, instance, sni

__all__ = ["cgw", "consul"]


def serve(double: ConsulDouble, upstreams) -> tuple[object, object]:
    one, two = upstreams(hello(b"v1 here")), upstreams(hello(b"v2 here"))
    double.register(instance(one.port, "v1"))
    double.register(instance(two.port, "v2", "warning"))
    double.intentions("s2", ("web", "allow"))
    double.link(GATEWAY, "s2")
    return one, two


@pytest_twisted.ensureDeferred
async def test_consul_resolver_subsets_and_deletion(cgw, consul: ConsulDouble, upstreams):
    """Subsets from Consul become routes (v2 OnlyPassing has no endpoint while its
    instance warns; v2-any reaches it); deleting the resolver in Consul removes the
    subset routes live and the plain name reaches every instance."""
    serve(consul, upstreams)
    consul.put_config(RESOLVER)
    await cgw.start()
    files = cgw.client("web")
    await cgw.wait_for(lambda: sni("v1") in cgw.routes())
    assert await in_thread(request, cgw.port, sni("v1"), files) == b"v1 here"
    assert await in_thread(request, cgw.port, sni(), files) == b"v1 here"  # DefaultSubset
    assert await in_thread(request, cgw.port, sni("v2-any"), files) == b"v2 here"
    assert await in_thread(request, cgw.port, sni("v2"), files) == b""
    await _refused(cgw.port, sni("v9"), files)

    consul.delete_config("service-resolver", "s2")
    await cgw.wait_for(lambda: cgw.routes() == {sni()})
    await _refused(cgw.port, sni("v1"), files)
    got = {await in_thread(request, cgw.port, sni(), files) for _ in range(4)}
    assert got == {b"v1 here", b"v2 here"}


@pytest_twisted.ensureDeferred
async def test_an_unreadable_consul_resolver_keeps_its_last_good_state(
    cgw, consul: ConsulDouble, upstreams
):
    """A resolver whose Filter tgw cannot parse (e.g. written by a newer Consul) is
    reported and that service's last good resolver stays in force."""
    serve(consul, upstreams)
    consul.put_config(RESOLVER)
    await cgw.start()
    await cgw.wait_for(lambda: sni("v1") in cgw.routes())
    bad = {**RESOLVER, "Subsets": {"v1": {"Filter": "Service.Meta.version ==="}}}
    consul.put_config(bad)
    errors = cgw.metric("tgw_catalog_errors_total", source="consul_catalog")
    await cgw.wait_for(
        lambda: cgw.metric("tgw_catalog_errors_total", source="consul_catalog") > errors
    )
    assert sni("v2-any") in cgw.routes()


@pytest_twisted.ensureDeferred
async def test_consul_destination_is_served_per_address(cgw, consul: ConsulDouble, upstreams):
    """A linked destination from Consul (gateway-services ServiceKind "destination", the
    double classifying it as Consul's catalog does) is served at its destination SNIs
    from its service-defaults Destination, with no catalog registration."""
    up = upstreams(hello(b"egress"))
    consul.put_config(defaults(up.port, "127.0.0.1", "localhost"))
    consul.intentions("example", ("web", "allow"))
    consul.link(GATEWAY, "example")
    await cgw.start()
    files = cgw.client("web")
    await cgw.wait_for(lambda: dsni("localhost") in cgw.routes())
    assert await in_thread(request, cgw.port, dsni("127.0.0.1"), files) == b"egress"
    assert await in_thread(request, cgw.port, dsni("localhost"), files) == b"egress"
    assert sni_for("example") not in cgw.routes()
