"""Endpoint choice through a real gateway: weights, least connections, outlier ejection.

Complements tests/policy/test_balancing.py (the sans-IO rules) by checking that the
site feeds connection outcomes back into them over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import pytest_twisted

from tests.harness import (
    Upstream,
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sample_sum,
    sni_for,
    tls_connect,
    write_json,
)


def weighted(service: str, port: int, weight: int) -> dict:
    reg = registration(service, port)
    reg["Service"]["Weights"] = {"Passing": weight, "Warning": 1}
    return reg


def link(gateway, registrations: list[dict]) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", registrations)
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("*", "allow")))


@pytest_twisted.ensureDeferred
async def test_weights_steer_new_connections(gateway, upstreams):
    """Weights 1:3 send about a quarter of the connections to the light instance."""
    light, heavy = upstreams(hello(b"light")), upstreams(hello(b"heavy"))
    link(gateway, [weighted("billing", light.port, 1), weighted("billing", heavy.port, 3)])
    await gateway.start()
    files = gateway.client_files("web")
    answers = Counter()
    for _ in range(40):
        answers[await in_thread(request, gateway.port, sni_for("billing"), files)] += 1
    assert answers[b"light"] + answers[b"heavy"] == 40
    assert 6 <= answers[b"light"] <= 14


@pytest_twisted.ensureDeferred
async def test_least_request_spreads_long_lived_connections(gateway, upstreams):
    """lb_policy = least_request: held connections go to the instance with fewer open."""
    gateway.site_options["lb_policy"] = "least_request"
    a, b = upstreams(), upstreams()  # echo servers that hold connections open
    link(gateway, [weighted("billing", a.port, 1), weighted("billing", b.port, 1)])
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    held = []
    for i in range(6):
        sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
        await in_thread(sock.sendall, b"x")
        assert await in_thread(sock.recv, 1) == b"x"
        held.append(sock)
        if i == 1:
            held.pop(0).close()  # one of the first two leaves: its instance has fewer now
            await gateway.wait_for(lambda: gateway.metric("tgw_downstream_connections_active") == 1)
    assert a.accepted + b.accepted == 6
    assert abs(a.accepted - b.accepted) <= 1
    for sock in held:
        sock.close()


class MovableSeconds:
    """The site's reactor, with a ``seconds()`` the test moves forward (``skew``):
    ejection windows are read from it, timers and sockets stay the real reactor's."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.skew = 0.0

    def seconds(self) -> float:
        return self.real.seconds() + self.skew

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest_twisted.ensureDeferred
async def test_refusing_endpoint_is_ejected_then_readmitted_after_backoff(gateway, upstreams):
    """After N refused connects an endpoint is skipped for the configured base ejection
    (300 s: still skipped 290 s later on the site's clock) and tried again after it."""
    gateway.site_options.update(
        outlier_consecutive_failures=2, outlier_base_ejection="300s", outlier_max_ejection="3000s"
    )
    live = upstreams(hello(b"live"))
    dead_port = free_port()
    link(gateway, [weighted("billing", dead_port, 1), weighted("billing", live.port, 1)])
    await gateway.start()
    clock = gateway.site.reactor = MovableSeconds(gateway.site.reactor)
    files = gateway.client_files("web")
    failures = lambda: gateway.metric(  # noqa: E731
        "tgw_upstream_connect_failures_total", service="billing", reason="refused"
    )
    while gateway.metric("tgw_upstream_ejections_total", service="billing") == 0:
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"live"
        assert failures() <= 2
    assert gateway.metric("tgw_upstream_endpoints", service="billing", state="ejected") == 1
    before = failures()
    for _ in range(6):  # while ejected, the dead endpoint is not even tried
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"live"
    assert failures() == before

    # The endpoint comes back to life; after the back-off it receives traffic again.
    revived = Upstream(hello(b"revived"), port=dead_port)
    try:
        clock.skew = 290.0  # within the 300 s ejection (real time spent here is far < 10 s)
        for _ in range(4):
            assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"live"
        assert revived.accepted == 0
        clock.skew = 300.0  # past it: the ejection began before the real time spent here
        answers = set()
        for _ in range(6):
            answers.add(await in_thread(request, gateway.port, sni_for("billing"), files))
        assert answers == {b"live", b"revived"}
    finally:
        revived.close()


@pytest_twisted.ensureDeferred
async def test_the_only_endpoint_is_never_ejected(gateway):
    """A destination's last endpoint keeps being tried however often it fails."""
    gateway.site_options.update(outlier_consecutive_failures=1, outlier_base_ejection="30s")
    link(gateway, [weighted("billing", free_port(), 1)])
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(3):
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b""
    assert (
        gateway.metric("tgw_upstream_connect_failures_total", service="billing", reason="refused")
        == 3
    )
    assert gateway.metric("tgw_upstream_ejections_total", service="billing") == 0


@pytest_twisted.ensureDeferred
async def test_the_last_endpoint_refusing_every_connect_is_not_reported_healthy(gateway):
    """A destination's only endpoint is never ejected (it stays in rotation), but after
    ``outlier_consecutive_failures`` refused connects ``tgw_upstream_endpoints`` no
    longer reports it healthy; a successful connect makes it healthy again."""
    gateway.site_options.update(outlier_consecutive_failures=2)
    dead_port = free_port()
    link(gateway, [weighted("billing", dead_port, 1)])
    await gateway.start()
    files = gateway.client_files("web")
    healthy = lambda: gateway.metric(  # noqa: E731
        "tgw_upstream_endpoints", service="billing", state="healthy"
    )
    assert healthy() == 1
    for _ in range(2):
        with contextlib.suppress(Exception):
            await in_thread(request, gateway.port, sni_for("billing"), files)
    await gateway.wait_for(
        lambda: (
            gateway.metric(
                "tgw_upstream_connect_failures_total", service="billing", reason="refused"
            )
            == 2
        )
    )
    assert healthy() == 0
    assert gateway.metric("tgw_upstream_endpoints", service="billing", state="ejected") == 0
    revived = Upstream(hello(b"revived"), port=dead_port)
    try:
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"revived"
        assert healthy() == 1
    finally:
        revived.close()


@pytest_twisted.ensureDeferred
async def test_per_service_series_leave_with_the_service(gateway, upstreams):
    """When a service leaves the catalog its per-service series (connections, bytes,
    decisions, close causes, endpoints) are deleted, so no dashboard or alert shows a
    service that is no longer served."""
    up = upstreams(hello(b"ok"))
    link(gateway, [weighted("billing", up.port, 1)])
    await gateway.start()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b"ok"
    )
    registry = gateway.service.metrics.registry
    billing = {"site": "main", "service": "billing"}
    await gateway.wait_for(
        lambda: (
            sample_sum(registry, "tgw_connections_closed_total", {**billing, "cause": "completed"})
            == 1
        )
    )
    assert sample_sum(registry, "tgw_downstream_connections_total", billing) == 1
    write_json(gateway.catalog / "gw.json", gateway_entry("other"))
    await gateway.wait_for(lambda: "billing" not in {d.name for _, d in gateway.site.router.routes})
    exported = {
        (s.name, s.labels.get("service"))
        for family in registry.collect()
        for s in family.samples
        if s.labels.get("service") == "billing"
    }
    assert exported == set(), exported
