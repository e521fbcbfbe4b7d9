"""Overload: connection and handshake limits refuse fast, are counted, and the clients
already admitted keep being served with the gateway's state and memory bounded.

Real sockets and real TLS (tests.harness: an in-process gateway on loopback, clients
in threads). The flood is raw TCP connections that never send a ClientHello: the
cheapest way for a client to hold a handshake slot.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    echo,
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sni_for,
    tls_connect,
    write_json,
)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _start(gateway, upstreams, gateway_table: str, **site: object) -> None:
    up = upstreams(echo)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.gateway_table = gateway_table
    gateway.site_options = dict(site)
    await gateway.start()


def _open_clients(port: int, files: tuple[Path, Path, Path], n: int) -> list[ssl.SSLSocket]:
    cert, key, root = files
    socks = []
    for _ in range(n):
        sock = tls_connect(port, sni_for("billing"), cert, key, root)
        sock.sendall(b"hi")
        assert sock.recv(16) == b"hi"
        socks.append(sock)
    return socks


def _echo_all(socks: list[ssl.SSLSocket], payload: bytes) -> bool:
    for sock in socks:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        if got != payload:
            return False
    return True


def _flood(port: int, n: int) -> list[socket.socket | None]:
    """``n`` TCP connections; ``None`` for one reset before connect() returned."""
    socks: list[socket.socket | None] = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except ConnectionResetError:
            socks.append(None)
    return socks


def _refused_fast(socks: list[socket.socket | None], within: float) -> tuple[int, int]:
    """(closed by the gateway within ``within`` s, still open) among ``socks``."""
    closed = still_open = 0
    deadline = time.monotonic() + within
    for sock in socks:
        if sock is None:
            closed += 1
            continue
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1)
            closed += data == b""
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            still_open += 1
    return closed, still_open


def _close(socks: list) -> None:
    for sock in socks:
        if sock is not None:
            sock.close()


@pytest_twisted.ensureDeferred
async def test_a_handshake_flood_is_refused_fast_and_admitted_clients_keep_being_served(
    gateway, upstreams
):
    """max_handshakes = 8: of 200 connections that never finish a handshake, 8 are held
    and 192 closed at once (counted as handshake_overflow, well before the 5 s handshake
    timeout); 10 established mTLS clients keep echoing through the flood; the site holds
    18 connections, never more, and the process grows by less than 8 MiB; once the flood
    leaves, a new client is admitted again."""
    await _start(gateway, upstreams, "max_handshakes = 8")
    files = gateway.client_files("web")
    admitted = await in_thread(_open_clients, gateway.port, files, 10)
    try:
        rss_before = _rss_kib()
        flood = await in_thread(_flood, gateway.port, 200)
        await gateway.wait_for(
            lambda: (
                gateway.metric("tgw_downstream_rejected_total", reason="handshake_overflow") == 192
            )
        )
        closed, still_open = await in_thread(_refused_fast, flood, 1.0)
        assert (closed, still_open) == (192, 8)
        assert len(gateway.site.active) == 18
        assert gateway.site.admission.handshakes == 8
        assert await in_thread(_echo_all, admitted, b"x" * 50_000)
        assert _rss_kib() - rss_before < 8 * 1024
        # A new, legitimate client is refused too while the 8 slots are held...
        cert, key, root = files
        with pytest.raises((HandshakeRefusedError, ConnectionResetError)):
            await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
        assert gateway.metric("tgw_downstream_rejected_total", reason="handshake_overflow") == 193
        _close(flood)
        await gateway.wait_for(lambda: gateway.site.admission.handshakes == 0)
        # ...and admitted once they are gone.
        late = await in_thread(_open_clients, gateway.port, files, 1)
        admitted += late
        assert gateway.site.admission.connections == 11
    finally:
        _close(admitted)
    await gateway.wait_for(lambda: gateway.site.admission.connections == 0)


@pytest_twisted.ensureDeferred
async def test_site_and_process_connection_limits_refuse_the_connection_over_them(
    gateway, upstreams
):
    """[gateway] max_connections = 6 and [sites.main] max_connections = 4: the fifth
    client is refused as overflow (the site's limit); with the site's limit raised
    above the process's, the seventh is refused as process_overflow. The admitted
    clients are unaffected."""
    await _start(gateway, upstreams, "max_connections = 6", max_connections=4)
    files = gateway.client_files("web")
    admitted = await in_thread(_open_clients, gateway.port, files, 4)
    try:
        extra = await in_thread(_flood, gateway.port, 1)
        assert await in_thread(_refused_fast, extra, 2.0) == (1, 0)
        assert gateway.metric("tgw_downstream_rejected_total", reason="overflow") == 1
        _close(extra)
        assert await in_thread(_echo_all, admitted, b"still here")
    finally:
        _close(admitted)
    await gateway.wait_for(lambda: gateway.site.admission.connections == 0)
    await gateway.stop()

    gateway.service = None
    await _start(gateway, upstreams, "max_connections = 6", max_connections=100)
    admitted = await in_thread(_open_clients, gateway.port, files, 6)
    try:
        extra = await in_thread(_flood, gateway.port, 1)
        assert await in_thread(_refused_fast, extra, 2.0) == (1, 0)
        assert gateway.metric("tgw_downstream_rejected_total", reason="process_overflow") == 1
        _close(extra)
        assert await in_thread(_echo_all, admitted, b"still here")
    finally:
        _close(admitted)
