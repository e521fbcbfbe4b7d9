"""Memory a connection keeps once it has moved data and gone idle.

OpenSSL's memory BIOs never give back capacity: a ``bio_write`` of 256 KiB (one
socket read) or a ``sendall`` of 256 KiB (one upstream read) leaves the connection
holding that much for the rest of its life. The terminator therefore hands OpenSSL
at most ``gwcore.net.bio.BIO_FEED`` bytes at a time and drains the BIO in between.

Measured with glibc's ``mallinfo2`` on the main arena: the reactor (the gateway)
runs in the main thread, the clients (tests.harness) in threads, whose allocations
go to other arenas and are not counted.
"""

from __future__ import annotations

import ctypes
import gc

import pytest
import pytest_twisted

from tests.harness import (
    echo,
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sleep,
    sni_for,
    tls_connect,
    write_json,
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def _main_arena_in_use() -> int:
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _open(port, files, n):
    cert, key, root = files
    socks = []
    for _ in range(n):
        sock = tls_connect(port, sni_for("billing"), cert, key, root)
        sock.sendall(b"!")
        assert sock.recv(1) == b"!"
        socks.append(sock)
    return socks


def _bulk(socks, size):
    """Each connection sends ``size`` bytes in one go and reads them all back."""
    payload = b"b" * size
    for sock in socks:
        sock.sendall(payload)
        got = 0
        while got < size:
            got += len(sock.recv(1 << 20))


@pytest_twisted.ensureDeferred
async def test_a_connection_that_moved_a_burst_keeps_little_memory_once_idle(gateway, upstreams):
    """16 connections each echo a 1 MiB burst, then idle: the gateway's main-arena
    heap grows by less than 80 KiB per connection (about 57 measured with 16 KiB
    records, whose BIO capacity stays; about 45 with 4 KiB records, which cost a MiB
    four times the records and 60 times the socket writes; about 660 when a whole
    256 KiB socket read went into OpenSSL's memory BIO at once)."""
    up = upstreams(echo)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    files = gateway.client_files("web")
    socks = await in_thread(_open, gateway.port, files, 16)
    try:
        await sleep(0.2)
        gc.collect()
        before = _main_arena_in_use()
        await in_thread(_bulk, socks, 1 << 20)
        await sleep(0.2)
        gc.collect()
        grown = _main_arena_in_use() - before
    finally:
        for sock in socks:
            sock.close()
    assert grown / 16 < 80 * 1024, f"{grown / 16 / 1024:.0f} KiB per connection"


@pytest_twisted.ensureDeferred
async def test_an_originating_connection_that_moved_a_burst_keeps_little_memory(
    gateway, upstreams, tmp_path
):
    """The same bound on the TLS origination side (gateway to a TLS service): after a
    1 MiB echo per connection the main-arena heap grows by less than 112 KiB per
    connection (two TLS connections each: about 89 measured with 16 KiB records,
    about 29 with 4 KiB records; about 380 when whole reads went into the memory BIOs)."""
    from tests.net.test_upstream_tls import SERVICE_NAME, ExternalPKI, link, tls_server

    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    files = gateway.client_files("web")
    socks = await in_thread(_open, gateway.port, files, 16)
    try:
        await sleep(0.2)
        gc.collect()
        before = _main_arena_in_use()
        await in_thread(_bulk, socks, 1 << 20)
        await sleep(0.2)
        gc.collect()
        grown = _main_arena_in_use() - before
    finally:
        for sock in socks:
            sock.close()
    assert grown / 16 < 112 * 1024, f"{grown / 16 / 1024:.0f} KiB per connection"
