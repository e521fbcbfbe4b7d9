"""The mesh role end to end on 127.0.0.1: SNI pass-through across "datacenters" (one
gateway service per gateway, own ports, one trust domain), and what it does with
ClientHellos it cannot use."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest_twisted

from tests.harness import (
    Upstream,
    gateway_entry,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    sha256,
    sni_for,
    tls_connect,
)
from tests.multidc import Federation, federation, gateway_instance, service_in, settle, spiffe
from tests.policy.test_clienthello import openssl_hello, oversized_hello

__all__ = ["federation"]


def read_then_reply(size: int, body: bytes):
    """Reads exactly ``size`` bytes (recording their hash), answers ``body`` and closes."""

    def handle(sock: socket.socket, up: Upstream) -> None:
        received = bytearray()
        while len(received) < size:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        up.results.append(sha256(bytes(received)))
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass

    return handle


@pytest_twisted.ensureDeferred
async def test_client_reaches_a_service_in_dc2_through_two_mesh_gateways(
    federation: Federation, upstreams
):
    """client (dc1) -> mesh (dc1) -> mesh (dc2) -> terminating (dc2) -> service: the client's
    mTLS session ends at dc2's terminating gateway (it verifies that gateway's leaf for the
    service), data arrives byte-identical both ways, and neither mesh site holds a key."""
    rng = random.Random(11)
    up_bytes, down_bytes = rng.randbytes(300_000), rng.randbytes(300_000)
    up = upstreams(read_then_reply(len(up_bytes), down_bytes))
    tgw2 = await federation.start(
        "tgw-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            service_in("billing", up.port, "dc2"),
            intentions("billing", ("web", "allow")),
        ],
    )
    mesh2 = await federation.start(
        "mesh-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            gateway_instance("terminating-gateway", "tgw-dc2", tgw2.port, "dc2"),
        ],
        role="mesh",
    )
    mesh1 = await federation.start(
        "mesh-dc1",
        "dc1",
        [gateway_instance("mesh-gateway", "mesh-gateway", mesh2.port, "dc2")],
        role="mesh",
    )
    files = federation.client_files("web", "dc1")

    slots = []

    def client() -> tuple[list[str], bytes]:
        cert, key, root = files
        with tls_connect(mesh1.port, sni_for("billing", "dc2"), cert, key, root) as sock:
            # Routed by its ClientHello: the connection holds no handshake slot any more.
            admission = mesh1.site.admission
            slots.append((admission.connections, admission.handshakes))
            uris = peer_uris(sock)
            sock.sendall(up_bytes)
            return uris, read_all(sock)

    uris, answer = await in_thread(client)
    assert slots == [(1, 0)]
    assert uris == [spiffe("billing", "dc2")]
    assert answer == down_bytes
    assert up.results == [sha256(up_bytes)]
    for mesh in (mesh1, mesh2):
        assert mesh.site.certs == [], "a mesh site builds no certificate provider"
        assert mesh.site.describe_certificates()["leaves"] == {}
        assert not (mesh.root / "state" / "ca").exists()
    await settle(mesh1, mesh2)
    assert mesh1.metric("tgw_mesh_connections_total", datacenter="dc2", via="mesh_gateways") == 1
    assert mesh2.metric("tgw_mesh_connections_total", datacenter="dc2", via="local") == 1
    for mesh in (mesh1, mesh2):
        sent = mesh.metric("tgw_mesh_bytes_total", datacenter="dc2", direction="upstream")
        assert sent > len(up_bytes)  # the payload plus the client's TLS records
    (record_,) = mesh1.access_records()
    assert record_["sni"] == sni_for("billing", "dc2") and record_["via"] == "mesh_gateways"
    assert record_["source"] is None and record_["close_cause"] == "completed"
    (terminated,) = tgw2.access_records()
    assert terminated["source"] == spiffe("web", "dc1")
    assert_closed_counted(mesh1, mesh2, tgw2)
    # dc2's mesh site dialled billing itself; dc1's dialled dc2's mesh gateways, and
    # counts under them: a client may put any service name in its SNI for another
    # datacenter, so that name is never a label (it is in the access log).
    closed = "tgw_connections_closed_total"
    labels = {"namespace": "default", "datacenter": "dc2", "cause": "completed"}
    assert mesh2.metric(closed, service="billing", **labels) == 1
    assert mesh1.metric(closed, service="mesh-gateway", **labels) == 1
    # Every admission slot (gwcore.policy.admission) is given back once the chain closed;
    # a mesh site's "handshake" ends with the ClientHello.
    for gw in (mesh1, mesh2, tgw2):
        assert (gw.site.admission.connections, gw.site.admission.handshakes) == (0, 0)


def assert_closed_counted(*gateways: Any) -> None:
    """Every access-log record of each gateway (mesh sites included) is counted in
    ``tgw_connections_closed_total`` under its close cause and the service dialled: its
    destination, the mesh gateways for a mesh site's remote route, ``""`` when it was
    never routed; and nothing else is counted."""
    for gw in gateways:
        expected: dict[tuple[str, str], int] = {}
        for r in gw.access_records():
            service = "mesh-gateway" if r["via"] == "mesh_gateways" else r["destination"]
            key = (service or "", r["close_cause"])
            expected[key] = expected.get(key, 0) + 1
        counted = {
            (s.labels["service"], s.labels["cause"]): s.value
            for f in gw.service.metrics.registry.collect()
            for s in f.samples
            if s.name == "tgw_connections_closed_total" and s.value
        }
        assert counted == expected, gw.key


def raw_exchange(port: int, data: bytes, shutdown: bool = False, timeout: float = 10) -> bytes:
    """Send ``data`` on plain TCP; what comes back before the gateway closes (b"" if reset)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_bad_clienthellos_are_dropped_and_counted_without_hurting_others(
    federation: Federation, upstreams
):
    """Garbage, a truncated hello, a 64 KiB hello, no SNI, a stalled hello, an unknown
    datacenter and an unknown service: each is closed with nothing sent back and counted
    by reason, while a connection already spliced keeps working; none reaches upstream."""
    echo_up = upstreams()  # the "terminating gateway": echoes whatever it gets
    mesh = await federation.start(
        "mesh-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            gateway_instance("terminating-gateway", "tgw-dc1", echo_up.port, "dc1"),
        ],
        role="mesh",
        options={"handshake_timeout": "0.5s"},
    )
    good = socket.create_connection(("127.0.0.1", mesh.port), timeout=10)
    hello = openssl_hello(sni_for("billing", "dc1"))

    def echo_round(payload: bytes) -> bytes:
        good.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += good.recv(65536)
        return bytes(got)

    first = await in_thread(echo_round, hello + b"first")
    assert first == hello + b"first", "bytes are spliced untouched"

    cases = {
        "not_tls": (b"GET / HTTP/1.1\r\nHost: billing\r\n\r\n", False),
        "truncated": (hello[: len(hello) // 2], True),
        "too_large": (oversized_hello(), False),
        "no_sni": (openssl_hello(None), False),
        "timeout": (hello[:20], False),
        "unknown_datacenter": (openssl_hello(sni_for("billing", "dc9")), False),
        "unknown_service": (openssl_hello(sni_for("ledger", "dc1")), False),
        "not_a_service_sni": (openssl_hello("example.com"), False),
    }
    for case, (data, shutdown) in cases.items():
        answer = await in_thread(raw_exchange, mesh.port, data, shutdown)
        assert answer == b"", f"{case}: the gateway sent {answer[:40]!r}"

    again = await in_thread(echo_round, b"second" * 1000)
    assert again == b"second" * 1000, "the spliced connection was not disturbed"
    good.close()
    await settle(mesh)
    for reason in ("not_tls", "truncated", "too_large", "no_sni", "timeout"):
        assert mesh.metric("tgw_mesh_bad_clienthello_total", reason=reason) == 1, reason
    for reason in ("unknown_datacenter", "unknown_service", "not_a_service_sni"):
        assert mesh.metric("tgw_mesh_no_route_total", reason=reason) == 1, reason
    assert echo_up.accepted == 1, "only the good connection reached upstream"
    causes = sorted(r["close_cause"] for r in mesh.access_records())
    assert "bad_clienthello:too_large" in causes and "no_route:unknown_datacenter" in causes
    assert_closed_counted(mesh)


@pytest_twisted.ensureDeferred
async def test_connect_and_leave_without_a_byte_is_not_a_bad_hello(federation: Federation):
    """A TCP health check (connect, close) is closed quietly: not counted as a bad hello."""
    mesh = await federation.start("mesh-dc1", "dc1", [], role="mesh")
    assert await in_thread(raw_exchange, mesh.port, b"", True) == b""
    await settle(mesh)
    assert mesh.metric("tgw_mesh_bad_clienthello_total", reason="truncated") == 0
    (record_,) = mesh.access_records()
    assert record_["close_cause"] == "client_closed"
