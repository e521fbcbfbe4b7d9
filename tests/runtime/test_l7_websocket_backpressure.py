"""Bounded memory in an upgraded (WebSocket) connection under backpressure, and half-close.

The gateway runs in-process (file catalog, builtin CA, intentions) with a real mesh
mTLS client and a real service on 127.0.0.1 port 0 that answers the upgrade ``101``
and then speaks raw bytes (after the switch the gateway moves opaque bytes, so no
WebSocket framing is needed to prove flow control). Traced memory is read as in
``test_l7_backpressure`` (``tracemalloc``, between reactor turns).
"""

from __future__ import annotations

import hashlib
import socket
import threading
import tracemalloc

import pytest_twisted

from tests.harness import Upstream, in_thread, sni_for, tls_connect
from tests.runtime.l7_support import link
from tests.runtime.test_l7_backpressure import BLOCK, BOUND, MIB, block, plateau

TOTAL = 32 * MIB

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: billing\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class RawTunnelService:
    """Answers an upgrade ``101``, then: ``download`` sends ``TOTAL`` bytes of blocks;
    ``upload`` reads nothing until ``gate`` is set, then hashes what comes until EOF;
    ``halfclose`` sends ``bye``, shuts its write side, then reads until EOF."""

    def __init__(self, upstreams, mode: str) -> None:
        self.mode = mode
        self.gate = threading.Event()
        self.sent = 0
        self.received = 0
        self.digest = hashlib.sha256()
        self.after_fin = b""
        self.upstream: Upstream = upstreams(self._serve)

    @property
    def port(self) -> int:
        return self.upstream.port

    def _serve(self, sock: socket.socket, up: Upstream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        sock.sendall(SWITCHED)
        if self.mode == "download":
            try:
                for i in range(TOTAL // BLOCK):
                    sock.sendall(block(i))
                    self.sent += BLOCK
            except OSError:
                return
            sock.close()
            return
        if self.mode == "idle":
            while chunk := sock.recv(65536):
                self.after_fin += chunk
            sock.close()
            return
        if self.mode == "halfclose":
            sock.sendall(b"bye")
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                self.after_fin += chunk
            sock.close()
            return
        self.gate.wait(60)
        while chunk := sock.recv(1 << 20):
            self.received += len(chunk)
            self.digest.update(chunk)
        sock.close()


def open_tunnel(gateway) -> tuple[socket.socket, bytes]:
    """A mesh connection switched by the service; the bytes read past the 101 head."""
    cert, key, root = gateway.client_files("web")
    sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
    sock.settimeout(60)
    sock.sendall(UPGRADE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


@pytest_twisted.ensureDeferred
async def test_tunnel_upload_to_a_service_that_reads_nothing_stays_bounded(gateway, upstreams):
    """32 MiB sent into the tunnel while the service reads nothing: the client is held
    back, traced memory stays under 4 MiB, and once the service reads, every byte
    arrives in order."""
    digest = hashlib.sha256()
    for i in range(TOTAL // BLOCK):
        digest.update(block(i))
    service = RawTunnelService(upstreams, "upload")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    sent = [0]

    def upload() -> None:
        sock, _ = open_tunnel(gateway)
        try:
            for i in range(TOTAL // BLOCK):
                sock.sendall(block(i))
                sent[0] += BLOCK
        finally:
            sock.close()

    tracemalloc.start()
    try:
        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        held, peak = await plateau(lambda: sent[0])
    finally:
        tracemalloc.stop()
    assert held < TOTAL  # the client was held back
    assert peak < BOUND, f"{peak / MIB:.1f} MiB traced while {held / MIB:.1f} MiB offered"
    service.gate.set()
    await in_thread(thread.join, 60)
    await in_thread(service.upstream.done.wait, 60)
    assert service.received == TOTAL and service.digest.digest() == digest.digest()


@pytest_twisted.ensureDeferred
async def test_tunnel_download_the_client_never_reads_stays_bounded(gateway, upstreams):
    """32 MiB from the service to a client that reads nothing: the service is held
    back, traced memory stays under 4 MiB, and once the client reads it gets every
    byte in order, then the end of the stream."""
    digest = hashlib.sha256(b"".join(block(i) for i in range(TOTAL // BLOCK))).digest()
    service = RawTunnelService(upstreams, "download")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    resume = threading.Event()
    got: list[bytes] = []

    def download() -> None:
        sock, rest = open_tunnel(gateway)
        try:
            resume.wait(60)
            data = bytearray(rest)
            while chunk := sock.recv(1 << 20):
                data += chunk
            got.append(hashlib.sha256(data).digest())
        finally:
            sock.close()

    thread = threading.Thread(target=download, daemon=True)
    tracemalloc.start()
    try:
        thread.start()
        held, peak = await plateau(lambda: service.sent)
    finally:
        tracemalloc.stop()
    assert held < TOTAL  # the service was held back
    assert peak < BOUND, f"{peak / MIB:.1f} MiB traced while {held / MIB:.1f} MiB offered"
    resume.set()
    await in_thread(thread.join, 60)
    assert got == [digest]


@pytest_twisted.ensureDeferred
async def test_service_half_close_reaches_the_client_which_may_still_send(gateway, upstreams):
    """The service sends ``bye`` and shuts its write side: the client reads ``bye`` and
    the end of the stream, and what it sends afterwards still reaches the service
    (a half-close is passed on, not turned into a close)."""
    service = RawTunnelService(upstreams, "halfclose")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> bytes:
        sock, rest = open_tunnel(gateway)
        try:
            data = bytearray(rest)
            while chunk := sock.recv(65536):
                data += chunk
            sock.sendall(b"after your FIN")
            return bytes(data)
        finally:
            sock.close()

    assert await in_thread(run) == b"bye"
    await in_thread(service.upstream.done.wait, 10)
    assert service.after_fin == b"after your FIN"


@pytest_twisted.ensureDeferred
async def test_an_idle_tunnel_is_closed_after_idle_timeout(gateway, upstreams):
    """No byte moves through a switched connection for ``idle_timeout`` (0.5 s here):
    the gateway closes both sides, as for an L4 connection, and the upgrade's record
    says why (``error`` ``idle_timeout``, status 101)."""
    gateway.site_options = {"idle_timeout": "0.5s"}
    service = RawTunnelService(upstreams, "idle")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> bytes:
        sock, rest = open_tunnel(gateway)
        try:
            data = bytearray(rest)
            while chunk := sock.recv(65536):
                data += chunk
            return bytes(data)
        finally:
            sock.close()

    assert await in_thread(run) == b""  # closed by the gateway, nothing sent
    assert await in_thread(service.upstream.done.wait, 10)
    await gateway.wait_for(
        lambda: any(r.get("record_type") == "request" for r in gateway.access_records())
    )
    (record,) = [r for r in gateway.access_records() if r.get("record_type") == "request"]
    assert record["status"] == 101 and record["error"] == "idle_timeout"
    closed = [r for r in gateway.access_records() if r.get("record_type") == "closed"]
    assert [r["close_cause"] for r in closed] == ["idle_timeout"]
