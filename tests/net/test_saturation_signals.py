"""Saturation and TLS signals (docs/metrics.md): handshake latency and versions, close
causes by service, the connection limit beside the active gauge, sub-millisecond
connect buckets, and bare TCP connects counted apart from TLS failures."""

from __future__ import annotations

import socket
import ssl

import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sample_sum,
    sni_for,
    write_json,
)


def _catalog(gateway, port: int) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))


def _refused(port: int, sni: str, files) -> bool:
    try:
        request(port, sni, files)
    except (HandshakeRefusedError, ssl.SSLError, ConnectionError):
        return True
    return False


@pytest_twisted.ensureDeferred
async def test_handshakes_close_causes_and_limits_are_measured(gateway, upstreams):
    """One forwarded connection and one unknown SNI: the handshake histogram (1 ms to
    10 s buckets) and the TLSv1.3 counter see the completed handshake; closes are
    counted by service and cause; the limit is exported beside the active gauge; the
    connect histogram has a 100 µs bucket."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    gateway.site_options = {**gateway.site_options, "max_connections": 123}
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"ok"
    assert await in_thread(_refused, gateway.port, "nope.example", files)
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    m = gateway.metric
    assert m("tgw_tls_handshake_seconds_count") == 1
    assert m("tgw_tls_handshake_seconds_bucket", le="0.001") <= 1
    assert m("tgw_tls_handshake_seconds_bucket", le="10.0") == 1
    assert m("tgw_tls_handshakes_total", version="TLSv1.3") == 1
    assert m("tgw_connections_closed_total", service="billing", cause="completed") == 1
    assert m("tgw_connections_closed_total", service="", cause="handshake:unknown_sni") == 1
    assert m("tgw_downstream_max_connections") == 123
    assert m("tgw_upstream_connect_seconds_count", service="billing") == 1
    registry = gateway.service.metrics.registry
    assert (
        sample_sum(
            registry,
            "tgw_upstream_connect_seconds_bucket",
            {"site": "main", "service": "billing", "le": "0.0001"},
        )
        is not None
    )


@pytest_twisted.ensureDeferred
async def test_a_bare_tcp_connect_is_not_a_tls_error(gateway, upstreams):
    """A TCP connect that sends nothing and closes (a load balancer's health check) is
    counted in ``tgw_downstream_no_data_total`` with close cause ``no_data``, not as a
    handshake error; a client that sent part of a hello and left still is one."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    await gateway.start()

    def bare(payload: bytes) -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            if payload:
                sock.sendall(payload)

    await in_thread(bare, b"")
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "no_data"
    assert gateway.metric("tgw_downstream_no_data_total") == 1
    assert gateway.metric("tgw_tls_handshake_errors_total", reason="client_closed") == 0
    await in_thread(bare, b"\x16\x03\x01")
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    assert gateway.access_records()[1]["close_cause"] == "handshake:client_closed"
    assert gateway.metric("tgw_tls_handshake_errors_total", reason="client_closed") == 1
    assert gateway.metric("tgw_downstream_no_data_total") == 1


@pytest_twisted.ensureDeferred
async def test_fixed_reasons_exist_at_zero_from_the_start(gateway):
    """Before any traffic, every fixed reason of the handshake-error, no-route and
    rejected counters is exported at 0, so ``increase()`` sees the first event after
    a restart."""
    from gwcore.contract.metrics import HANDSHAKE_REASONS, NO_ROUTE_REASONS, REJECTED_REASONS

    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    await gateway.start()
    registry = gateway.service.metrics.registry

    def value(name: str, reason: str) -> float | None:
        return sample_sum(registry, name, {"site": "main", "reason": reason})

    for reason in HANDSHAKE_REASONS:
        assert value("tgw_tls_handshake_errors_total", reason) == 0, reason
    for reason in NO_ROUTE_REASONS:
        assert value("tgw_no_route_total", reason) == 0, reason
    for reason in REJECTED_REASONS:
        assert value("tgw_downstream_rejected_total", reason) == 0, reason
    assert sample_sum(registry, "tgw_downstream_no_data_total", {"site": "main"}) == 0


@pytest_twisted.ensureDeferred
async def test_process_usage_and_event_loop_lag_are_sampled(gateway):
    """Once started, the gateway exports its own process's resident memory, CPU and open
    descriptors (prometheus-client's process collector, copied per process so workers
    each show) and the event-loop lag of its once-a-second tick."""
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    await gateway.start()
    registry = gateway.service.metrics.registry

    def value(name: str) -> float | None:
        return sample_sum(registry, name, {})

    assert value("tgw_process_resident_memory_bytes") > 1 << 20
    assert value("tgw_process_open_fds") > 3
    assert value("tgw_process_cpu_seconds") > 0
    await gateway.wait_for(lambda: value("tgw_event_loop_lag_seconds") is not None)
    assert 0 <= value("tgw_event_loop_lag_seconds") < 5


@pytest_twisted.ensureDeferred
async def test_bare_tcp_connects_can_be_left_out_of_the_access_log(gateway, upstreams):
    """``access_log_no_data = false``: a bare TCP connect is counted but not logged; a
    real connection after it still is."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    gateway.site_options = {**gateway.site_options, "access_log_no_data": False}
    await gateway.start()

    def bare() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5):
            pass

    await in_thread(bare)
    await gateway.wait_for(lambda: gateway.metric("tgw_downstream_no_data_total") == 1)
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"ok"
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "completed"
