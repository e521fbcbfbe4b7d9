"""L7 HTTP/1.1 upstream pool and its endpoints' standing (issue 22): a connection freed
by one request goes to a waiting request only if its endpoint is still one that
request may use, and a connection to an endpoint that left the catalog or turned
critical is closed, not kept. Through a real gateway: mesh mTLS clients in, real h11
services on 127.0.0.1 port 0 out (file catalog, builtin CA, intentions)."""

from __future__ import annotations

import threading
from typing import Any

import pytest_twisted

from tests.harness import gateway_entry, in_thread, intentions, registration, sni_for, write_json
from tests.runtime.l7_support import HttpService, SeenRequest, get, mesh_http, ok, service_defaults


def link(gateway: Any, endpoints: list[tuple[int, str]]) -> None:
    """billing (protocol http) at each (port, health)."""
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(
        gateway.catalog / "regs.json",
        [registration("billing", port, status=status) for port, status in endpoints],
    )
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))


def one_request(gateway: Any, path: str, **headers: str) -> int:
    """One request on a fresh client connection: its status."""
    conn = mesh_http(gateway, "billing", "web")
    try:
        return get(conn, path, headers=headers)[0]
    finally:
        conn.close()


def endpoints_now(gateway: Any) -> set[tuple[int, str]]:
    """billing's endpoints in the site's live route table: (port, health)."""
    routes, _ = gateway.site.current()
    destination = routes.lookup(sni_for("billing"))
    return {(e.port, e.health.value) for e in destination.endpoints}


def pool_connections(gateway: Any) -> list[Any]:
    """Every HTTP/1.1 upstream connection the site's pools hold (idle or busy)."""
    held: list[Any] = []
    for pool in gateway.site.l7.pools.values():
        held.extend(pool.busy)
        for queue in pool.idle.values():
            held.extend(queue)
    return held


async def waiting_request_after_change(gateway: Any, upstreams: Any, change: Any) -> None:
    """max_upstream_connections 1: /slow in flight at A, /two waiting; ``change(a, b)``
    rewrites the catalog; /slow ends. /two must reach B, and the connection to A close."""
    release = threading.Event()

    def slow(req: SeenRequest) -> Any:
        if req.target == "/slow":
            release.wait(10)
        return ok(req)

    a, b = HttpService(upstreams, slow), HttpService(upstreams)
    gateway.site_options = {"http_max_upstream_connections": 1}
    link(gateway, [(a.port, "passing")])
    await gateway.start()
    try:
        first = in_thread(one_request, gateway, "/slow")
        await gateway.wait_for(lambda: len(a.requests) == 1)
        second = in_thread(one_request, gateway, "/two")
        await gateway.wait_for(lambda: any(p.waiting for p in gateway.site.l7.pools.values()))
        expected = change(a, b)
        await gateway.wait_for(lambda: endpoints_now(gateway) == expected)
    finally:
        release.set()
    assert await first == 200 and await second == 200
    assert [r.target for r in a.requests] == ["/slow"]
    assert [r.target for r in b.requests] == ["/two"]
    await gateway.wait_for(
        lambda: all(c.endpoint.port != a.port for c in pool_connections(gateway))
    )


@pytest_twisted.ensureDeferred
async def test_a_waiting_request_is_not_given_a_connection_to_an_endpoint_that_left(
    gateway, upstreams
):
    """A leaves the catalog and B joins while /slow is in flight at A and /two waits
    for the destination's only connection slot: when /slow ends, /two is sent to B
    (its endpoints of now), not on A's freed connection, and that connection closes
    instead of idling in the pool."""

    def change(a: HttpService, b: HttpService) -> set[tuple[int, str]]:
        write_json(gateway.catalog / "regs.json", [registration("billing", b.port)])
        return {(b.port, "passing")}

    await waiting_request_after_change(gateway, upstreams, change)


@pytest_twisted.ensureDeferred
async def test_a_waiting_request_is_not_given_a_connection_to_an_endpoint_turned_critical(
    gateway, upstreams
):
    """A turns critical and B joins while /slow is in flight at A and /two waits: /two
    goes to B, and A's freed connection closes."""

    def change(a: HttpService, b: HttpService) -> set[tuple[int, str]]:
        write_json(
            gateway.catalog / "regs.json",
            [
                registration("billing", a.port, status="critical"),
                registration("billing", b.port),
            ],
        )
        return {(a.port, "critical"), (b.port, "passing")}

    await waiting_request_after_change(gateway, upstreams, change)


@pytest_twisted.ensureDeferred
async def test_a_busy_connection_to_an_endpoint_that_left_closes_when_its_exchange_ends(
    gateway, upstreams
):
    """With no request waiting: A leaves the catalog while /slow is in flight on a
    connection to A; /slow is still answered whole, then that connection closes
    rather than parking idle."""
    release = threading.Event()

    def slow(req: SeenRequest) -> Any:
        if req.target == "/slow":
            release.wait(10)
        return ok(req)

    a, b = HttpService(upstreams, slow), HttpService(upstreams)
    link(gateway, [(a.port, "passing")])
    await gateway.start()
    try:
        first = in_thread(one_request, gateway, "/slow")
        await gateway.wait_for(lambda: len(a.requests) == 1)
        write_json(gateway.catalog / "regs.json", [registration("billing", b.port)])
        await gateway.wait_for(lambda: endpoints_now(gateway) == {(b.port, "passing")})
    finally:
        release.set()
    assert await first == 200
    await gateway.wait_for(lambda: not pool_connections(gateway))


@pytest_twisted.ensureDeferred
async def test_a_busy_connection_to_an_ejected_endpoint_closes_when_its_exchange_ends(
    gateway, upstreams
):
    """ring_hash on x-user over A and B, outlier_consecutive_failures 1: /slow is in
    flight at A on A's only connection when A stops accepting; the next request hashed
    to A must dial, fails, ejects A and is answered by B. When /slow then ends (whole),
    its connection to the ejected A closes instead of parking idle."""
    release = threading.Event()

    def slow(req: SeenRequest) -> Any:
        if req.target == "/slow":
            release.wait(10)
        return ok(req)

    a, b = HttpService(upstreams, slow), HttpService(upstreams)
    gateway.site_options = {"outlier_consecutive_failures": 1}
    link(gateway, [(a.port, "passing"), (b.port, "passing")])
    write_json(
        gateway.catalog / "resolver.json",
        {
            "Kind": "service-resolver",
            "Name": "billing",
            "LoadBalancer": {
                "Policy": "ring_hash",
                "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}],
            },
        },
    )
    await gateway.start()
    to_a = None
    for i in range(64):  # bounded: 64 keys all on B has odds of 2**-64
        assert await in_thread(one_request, gateway, f"/probe/{i}", **{"x-user": f"u{i}"}) == 200
        if any(r.target == f"/probe/{i}" for r in a.requests):
            to_a = f"u{i}"
            break
    assert to_a is not None
    try:
        first = in_thread(one_request, gateway, "/slow", **{"x-user": to_a})
        await gateway.wait_for(lambda: any(r.target == "/slow" for r in a.requests))
        a.upstream.close()  # A accepts no new connection; the one carrying /slow stays
        assert await in_thread(one_request, gateway, "/after", **{"x-user": to_a}) == 200
        assert gateway.metric("tgw_upstream_ejections_total", service="billing") == 1
        assert any(r.target == "/after" for r in b.requests)
    finally:
        release.set()
    assert await first == 200
    await gateway.wait_for(
        lambda: all(c.endpoint.port != a.port for c in pool_connections(gateway))
    )
