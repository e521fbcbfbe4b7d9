"""L7 HTTP/1.1 upstream pools per endpoint and the resolver's HashPolicies per request,
through a real gateway: mesh mTLS clients in, several real h11 services on 127.0.0.1
port 0 out (file catalog, builtin CA, intentions)."""

from __future__ import annotations

import sys
from typing import Any

import pytest_twisted

from tests.harness import free_port, gateway_entry, in_thread, intentions, registration, write_json
from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults


def link_many(gateway: Any, ports: list[int], load_balancer: dict | None = None) -> None:
    """billing (protocol http) on every port; its resolver's LoadBalancer if given."""
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", p) for p in ports])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    if load_balancer is not None:
        write_json(
            gateway.catalog / "resolver.json",
            {"Kind": "service-resolver", "Name": "billing", "LoadBalancer": load_balancer},
        )


def served_by(services: list[HttpService], target: str) -> list[int]:
    """Indexes of the services that received a request for ``target``."""
    return [i for i, s in enumerate(services) if any(r.target == target for r in s.requests)]


def one_request(gateway: Any, path: str, **headers: str) -> tuple[int, Any]:
    """One request on a fresh client connection: (status, response)."""
    conn = mesh_http(gateway, "billing", "web")
    try:
        status, _, response = get(conn, path, headers=headers)
        return status, response
    finally:
        conn.close()


async def hashed_placement(gateway: Any, services: list[HttpService], send: Any) -> dict[str, int]:
    """Each of 12 keys sent twice, each time on a new client connection: the endpoint
    of each key (asserting both requests of a key reached the same one)."""
    placed: dict[str, int] = {}
    for key in [f"k{i}" for i in range(12)]:
        for attempt in range(2):
            status = await in_thread(send, key, f"/{key}/{attempt}")
            assert status == 200
        first, second = served_by(services, f"/{key}/0"), served_by(services, f"/{key}/1")
        assert len(first) == 1 and first == second, (key, first, second)
        placed[key] = first[0]
    return placed


@pytest_twisted.ensureDeferred
async def test_same_header_value_lands_on_the_same_endpoint_across_connections(gateway, upstreams):
    """ring_hash with a header hash policy: both requests carrying one ``x-user`` value
    reach the same endpoint, each on its own client connection; the 12 values spread
    over more than one of the three endpoints."""
    services = [HttpService(upstreams) for _ in range(3)]
    link_many(
        gateway,
        [s.port for s in services],
        {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]},
    )
    await gateway.start()
    placed = await hashed_placement(
        gateway, services, lambda key, path: one_request(gateway, path, **{"x-user": key})[0]
    )
    assert len(set(placed.values())) > 1, placed


@pytest_twisted.ensureDeferred
async def test_same_query_parameter_and_cookie_land_on_the_same_endpoint(gateway, upstreams):
    """maglev hashing a query parameter, then (Terminal) a cookie: a key in either place
    sticks to one endpoint across connections."""
    services = [HttpService(upstreams) for _ in range(3)]
    link_many(
        gateway,
        [s.port for s in services],
        {
            "Policy": "maglev",
            "HashPolicies": [
                {"Field": "cookie", "FieldValue": "sid", "Terminal": True},
                {"Field": "query_parameter", "FieldValue": "tenant"},
            ],
        },
    )
    await gateway.start()
    by_cookie = await hashed_placement(
        gateway,
        services,
        lambda key, path: one_request(gateway, path, cookie=f"a=1; sid={key}")[0],
    )
    by_query = await hashed_placement(
        gateway, services, lambda key, path: one_request(gateway, f"{path}?tenant={key}")[0]
    )
    assert len(set(by_cookie.values())) > 1 and len(set(by_query.values())) > 1


@pytest_twisted.ensureDeferred
async def test_a_generated_cookie_is_set_and_keeps_the_client_on_its_endpoint(gateway, upstreams):
    """CookieConfig with a TTL: a request without the cookie is answered with
    ``Set-Cookie`` (Max-Age, Path, HttpOnly); sent back, on new connections, it keeps
    every request on the endpoint of the first."""
    services = [HttpService(upstreams) for _ in range(3)]
    link_many(
        gateway,
        [s.port for s in services],
        {
            "Policy": "ring_hash",
            "HashPolicies": [
                {
                    "Field": "cookie",
                    "FieldValue": "sid",
                    "CookieConfig": {"TTL": "1h", "Path": "/"},
                }
            ],
        },
    )
    await gateway.start()
    status, response = await in_thread(one_request, gateway, "/first")
    assert status == 200
    set_cookie = response.getheader("set-cookie")
    assert set_cookie is not None and set_cookie.startswith("sid=")
    assert set_cookie.endswith("; Max-Age=3600; Path=/; HttpOnly")
    cookie = set_cookie.split(";")[0]
    for i in range(4):
        status, again = await in_thread(one_request, gateway, f"/again/{i}", cookie=cookie)
        assert status == 200 and again.getheader("set-cookie") is None
    (first,) = served_by(services, "/first")
    assert all(served_by(services, f"/again/{i}") == [first] for i in range(4))


@pytest_twisted.ensureDeferred
async def test_each_request_chooses_its_endpoint_and_reuses_that_endpoints_connection(
    gateway, upstreams
):
    """round_robin over two endpoints, six keep-alive requests on one client
    connection: the requests alternate between the endpoints (the choice is per
    request, not per upstream connection), and each endpoint serves its three on one
    kept-alive connection of its own."""
    services = [HttpService(upstreams) for _ in range(2)]
    link_many(gateway, [s.port for s in services])
    await gateway.start()

    def run() -> list[int]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return [get(conn, f"/r/{i}")[0] for i in range(6)]
        finally:
            conn.close()

    assert await in_thread(run) == [200] * 6
    assert [len(s.requests) for s in services] == [3, 3]
    assert [s.connections for s in services] == [1, 1]
    order = [served_by(services, f"/r/{i}")[0] for i in range(6)]
    assert order[0::2] == [order[0]] * 3 and order[1::2] == [1 - order[0]] * 3


@pytest_twisted.ensureDeferred
async def test_a_hashed_request_to_a_dead_endpoint_is_retried_and_the_endpoint_ejected(
    gateway, upstreams
):
    """One of three endpoints refuses connections: every hashed request is still
    answered (connect retries move to the next endpoint on the ring), and after one
    failure the endpoint is ejected, so the hash skips it and it is not dialled
    again."""
    gateway.site_options.update(outlier_consecutive_failures=1)
    services = [HttpService(upstreams) for _ in range(2)]
    dead = free_port()
    link_many(
        gateway,
        [services[0].port, dead, services[1].port],
        {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]},
    )
    await gateway.start()
    for i in range(32):
        status, _ = await in_thread(one_request, gateway, f"/u/{i}", **{"x-user": f"user-{i}"})
        assert status == 200
    assert sum(len(s.requests) for s in services) == 32
    assert gateway.metric("tgw_upstream_connect_failures_total", service="billing") == 1
    assert gateway.metric("tgw_upstream_ejections_total", service="billing") == 1


CHOOSER = """
preferred = []
asked = []


def tgw_choose_endpoint(event):
    asked.append(sorted(e.port for e in event.candidates))
    event.choose([e for e in event.candidates if e.port == preferred[-1]])
"""


@pytest_twisted.ensureDeferred
async def test_a_choose_endpoint_addon_decides_each_request(gateway, upstreams, tmp_path):
    """At an http destination tgw_choose_endpoint is asked per request (not per upstream
    connection): keep-alive requests of one client follow the addon's current choice,
    each endpoint's requests reusing that endpoint's connection."""
    services = [HttpService(upstreams) for _ in range(2)]
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / "chooser.py").write_text(CHOOSER)
    link_many(gateway, [s.port for s in services])
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "chooser"]
    await gateway.start()
    chooser = sys.modules[gateway.site.stack.pm.get_plugin("chooser").__name__]
    conn = await in_thread(mesh_http, gateway, "billing", "web")
    try:
        for i, service in enumerate([0, 0, 1, 1, 0]):
            chooser.preferred.append(services[service].port)
            status, _, _ = await in_thread(get, conn, f"/c/{i}")
            assert status == 200
    finally:
        conn.close()
    assert [served_by(services, f"/c/{i}") for i in range(5)] == [[0], [0], [1], [1], [0]]
    assert [s.connections for s in services] == [1, 1]
    assert chooser.asked == [sorted(s.port for s in services)] * 5
