"""Bounded memory under backpressure at an L7 destination, 64 MiB each way.

The gateway runs in-process (file catalog, builtin CA, intentions) with a real mesh
mTLS client and a real HTTP/1.1 service (h11, 127.0.0.1 port 0). Python's own
allocation tracer (``tracemalloc``: every allocation of this process, the gateway's
and the test threads', which hold next to nothing while stalled) is read on the
reactor thread between reactor turns while one side stops reading: what stays
allocated must be within the documented bound (docs/l7.md, "Flow control") however
much the other side offers.
Once the reader resumes, every byte arrives, in order.
"""

from __future__ import annotations

import hashlib
import threading
import time
import tracemalloc

import h11
import pytest_twisted

from tests.harness import in_thread, sleep, sni_for, tls_connect
from tests.runtime.l7_support import HttpService, link

MIB = 1 << 20
TOTAL = 64 * MIB
BLOCK = 64 * 1024
BOUND = 4 * MIB
"""docs/l7.md: per direction a read or two (256 KiB each) and a transport's write buffer
up to its high-water mark; 4 MiB leaves room for the gateway's other state and is a
sixteenth of what is offered."""


def block(i: int) -> bytes:
    """Block ``i`` of the stream: its index, then filler that depends on it."""
    return i.to_bytes(4, "big") + bytes([i % 251]) * (BLOCK - 4)


async def plateau(progress, quiet: float = 0.5, limit: float = 30.0) -> tuple[int, int]:
    """Wait until ``progress()`` has not moved for ``quiet`` seconds (at most ``limit``);
    ``(progress, most bytes allocated at once)``, traced between reactor turns (a
    transient of one turn, such as a file poll's read buffer, is not held data)."""
    deadline = time.monotonic() + limit
    last, since = progress(), time.monotonic()
    most = 0
    while time.monotonic() < deadline:
        await sleep(0.02)
        most = max(most, tracemalloc.get_traced_memory()[0])
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now, most
    raise AssertionError(f"still moving after {limit}s: {last} bytes")


class SlowReader:
    """An HTTP/1.1 service (h11) that reads a request head, then nothing until ``gate``
    is set; then the body, hashed as it comes, and answers 200."""

    def __init__(self, upstreams) -> None:
        self.gate = threading.Event()
        self.received = 0
        self.digest = hashlib.sha256()
        self.upstream = upstreams(self._serve)
        self.port = self.upstream.port

    def _serve(self, sock, up) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(BLOCK))
            elif isinstance(event, h11.Request):
                self.gate.wait(60)
            elif isinstance(event, h11.Data):
                self.received += len(event.data)
                self.digest.update(event.data)
            elif isinstance(event, h11.EndOfMessage):
                head = h11.Response(status_code=200, headers=[("content-length", "0")])
                sock.sendall(conn.send(head) + conn.send(h11.EndOfMessage()))
                return
            else:
                return


@pytest_twisted.ensureDeferred
async def test_an_upload_to_a_service_that_reads_nothing_stays_bounded(gateway, upstreams):
    """A 64 MiB upload to a service that stopped reading: the client is held back
    (it cannot send it all), the process's traced memory stays under 4 MiB, and once
    the service reads, it receives all 64 MiB in order."""
    digest = hashlib.sha256()
    for i in range(TOTAL // BLOCK):
        digest.update(block(i))
    service = SlowReader(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sent = [0]
    result: list[bytes] = []

    def upload() -> None:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        sock.settimeout(60)
        try:
            sock.sendall(
                b"PUT /big HTTP/1.1\r\nHost: billing\r\nContent-Length: %d\r\n\r\n" % TOTAL
            )
            for i in range(TOTAL // BLOCK):
                sock.sendall(block(i))
                sent[0] += BLOCK
            result.append(sock.recv(4096))
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
    assert result and result[0].startswith(b"HTTP/1.1 200")
    assert service.received == TOTAL and service.digest.digest() == digest.digest()


@pytest_twisted.ensureDeferred
async def test_a_download_the_client_never_reads_stays_bounded(gateway, upstreams):
    """A 64 MiB response to a client that reads nothing: the service is held back, the
    process's traced memory stays under 4 MiB, and once the client reads, it gets all
    64 MiB in order."""
    blocks = [block(i) for i in range(TOTAL // BLOCK)]
    digest = hashlib.sha256(b"".join(blocks)).digest()
    service = HttpService(
        upstreams, lambda r: (200, [("content-length", str(TOTAL))], list(blocks))
    )
    service.cut_ok = True
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    resume = threading.Event()
    got: list[tuple[int, bytes]] = []

    def download() -> None:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        sock.settimeout(60)
        try:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: billing\r\n\r\n")
            resume.wait(60)
            data = bytearray()
            while len(data) < TOTAL + 1024:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
                head_end = data.find(b"\r\n\r\n")
                if head_end >= 0 and len(data) - head_end - 4 >= TOTAL:
                    break
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            got.append((int(head.split(b" ")[1]), hashlib.sha256(body).digest()))
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
    assert got == [(200, digest)]
