"""Fault injection during traffic, through the in-process gateway (tests.harness): real
TLS clients, real upstream sockets on loopback that misbehave on purpose.

Faults covered elsewhere, by the module that owns them: Consul outage and restart
(tests/plugins/test_consul_gateway.py::test_consul_restart_and_outage_lose_no_route_and_recover),
DNS down (tests/net/test_hostnames.py::test_the_last_answer_keeps_serving_while_dns_is_down,
tests/plugins/test_dns_catalog.py::test_server_stopped_serves_stale_then_routes_with_no_endpoints),
OPA unreachable or slow (tests/plugins/test_opa.py::test_remote_unreachable_fails_closed,
::test_remote_timeout), certificate files deleted or bad
(tests/plugins/test_file_certs.py::test_a_deleted_file_keeps_the_previous_material,
::test_a_bad_file_keeps_the_previous_material_until_fixed). docs/reliability.md lists them.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest_twisted
from twisted.logger import globalLogPublisher

from tests.harness import (
    Upstream,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    tls_connect,
    write_json,
)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _start(gateway, ports: list[int], **site: object) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", p) for p in ports])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.site_options = dict(site)
    await gateway.start()


def _reset_after(first: bytes):
    """Upstream: send ``first``, then reset the connection (SO_LINGER 0: an RST)."""

    def handler(sock: socket.socket, upstream: Upstream) -> None:
        sock.recv(1024)
        sock.sendall(first)
        time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    return handler


@pytest_twisted.ensureDeferred
async def test_an_upstream_reset_mid_stream_closes_the_client_and_the_next_one_is_served(
    gateway, upstreams
):
    """The service sends 1000 bytes then resets: the client gets those bytes and then
    its connection closed (not left hanging); the access log says the upstream closed
    it; nothing stays open; the next client is served the same way."""
    up = upstreams(_reset_after(b"r" * 1000))
    await _start(gateway, [up.port])
    files = gateway.client_files("web")
    for _ in range(2):
        got = await in_thread(request, gateway.port, sni_for("billing"), files, b"go")
        assert got == b"r" * 1000
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    assert {r["close_cause"] for r in gateway.access_records()} == {"upstream_closed"}
    assert len(gateway.site.active) == 0


def _never_reads(stop: threading.Event):
    def handler(sock: socket.socket, upstream: Upstream) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stop.wait(30)

    return handler


def _push_until_blocked(port: int, files, total: int) -> int:
    """Send up to ``total`` bytes; stop when a send makes no progress for 1 s."""
    cert, key, root = files
    sock = tls_connect(port, sni_for("billing"), cert, key, root)
    sock.settimeout(1.0)
    chunk = b"z" * 65536
    sent = 0
    try:
        while sent < total:
            try:
                sock.sendall(chunk)
            except TimeoutError:
                break
            sent += len(chunk)
    finally:
        sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_stops_reading_pushes_back_to_the_client_with_memory_bounded(
    gateway, upstreams
):
    """The service never reads. Of the 256 MiB a client tries to send, the gateway lets
    through only what the socket buffers on both sides hold (the client's send blocks
    before 24 MiB), and the gateway process grows by less than 16 MiB meanwhile:
    flow control, not an unbounded buffer, holds the rest back."""
    stop = threading.Event()
    up = upstreams(_never_reads(stop))
    await _start(gateway, [up.port])
    files = gateway.client_files("web")
    rss_before = _rss_kib()
    try:
        sent = await in_thread(_push_until_blocked, gateway.port, files, 256 << 20)
        grown = _rss_kib() - rss_before
    finally:
        stop.set()
    assert sent < 24 << 20, sent
    assert grown < 16 * 1024, grown


def _black_hole() -> tuple[socket.socket, socket.socket]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a
    connect to it neither succeeds nor fails until the connector gives up."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname())
    return hole, filler


@pytest_twisted.ensureDeferred
async def test_a_black_holed_endpoint_times_out_and_the_next_endpoint_serves(gateway, upstreams):
    """One of billing's two endpoints never answers a SYN: with connect_timeout 0.3 s,
    every client is still served (by the other endpoint), the timeouts are counted as
    connect failures with reason timeout, and no client waits much past the timeout."""
    hole, filler = _black_hole()
    try:
        good = upstreams(hello(b"pong"))
        await _start(gateway, [hole.getsockname()[1], good.port], connect_timeout="0.3s")
        files = gateway.client_files("web")
        for _ in range(4):
            started = time.monotonic()
            got = await in_thread(request, gateway.port, sni_for("billing"), files, b"ping")
            assert got == b"pong"
            assert time.monotonic() - started < 3.0
        timeouts = gateway.metric(
            "tgw_upstream_connect_failures_total", service="billing", reason="timeout"
        )
        assert timeouts >= 1
        assert gateway.metric("tgw_upstream_retries_total", service="billing") == timeouts
    finally:
        filler.close()
        hole.close()


@pytest_twisted.ensureDeferred
async def test_a_full_disk_for_the_access_log_drops_records_not_connections(gateway, upstreams):
    """access_log = /dev/full: every write fails with ENOSPC. Clients are served as
    before, each lost record is counted in tgw_access_log_dropped_total, and the log
    says so once, with no traceback."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        up = upstreams(hello(b"pong"))
        gateway.access_log = "/dev/full"
        await _start(gateway, [up.port])
        files = gateway.client_files("web")
        for _ in range(5):
            assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"pong"
        value = gateway.service.metrics.registry.get_sample_value
        await gateway.wait_for(lambda: value("tgw_access_log_dropped_total", {}) == 5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None]
    assert len([e for e in events if e.get("log_namespace") == "tgw.accesslog"]) == 1
