"""L7 mode, flow control and drain, through a real gateway (mesh mTLS in, a real h11
service out, 127.0.0.1 port 0): no unbounded buffer in either direction, and keep-alive
HTTP connections end after their request when the site stops."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time

import pytest_twisted
from twisted.internet import defer

from tests.harness import in_thread, sleep, sni_for, tls_connect
from tests.runtime.l7_support import HttpService, get, link, mesh_http


@pytest_twisted.ensureDeferred
async def test_a_slow_client_pauses_the_service_and_gets_every_byte(gateway, upstreams):
    """Flow control, response direction: while the client reads nothing, the service
    cannot write much more than the socket buffers hold (the gateway stops reading it
    rather than buffering); then every byte arrives, in order."""
    piece = bytes(range(256)) * 256  # 64 KiB
    chunks = [piece] * 512  # 32 MiB
    service = HttpService(
        upstreams,
        lambda r: (200, [("content-length", str(len(piece) * len(chunks)))], chunks),
    )
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    try:
        await in_thread(sock.sendall, b"GET /big HTTP/1.1\r\nHost: billing\r\n\r\n")
        await gateway.wait_for(lambda: service.sent > 0)
        await sleep(0.5)  # the client reads nothing meanwhile
        held = service.sent
        assert held < 16 * 1024 * 1024, f"{held} bytes left the service with nobody reading"

        def read_rest() -> bytes:
            response = http.client.HTTPResponse(sock, method="GET")
            response.begin()
            return response.read()

        body = await in_thread(read_rest)
    finally:
        sock.close()
    assert hashlib.sha256(body).digest() == hashlib.sha256(piece * len(chunks)).digest()


@pytest_twisted.ensureDeferred
async def test_a_slow_service_pauses_the_client_upload(gateway, upstreams):
    """Flow control, request direction: while the service reads nothing, the client
    cannot push much more than the socket buffers hold; then the whole body arrives in
    order."""
    body = bytes(range(256)) * (4096 * 32)  # 32 MiB
    service = HttpService(upstreams)
    service.read_gate.clear()
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    pushed = [0]

    def upload() -> bytes:
        sock.sendall(b"PUT /up HTTP/1.1\r\nHost: billing\r\nContent-Length: %d\r\n\r\n" % len(body))
        view = memoryview(body)
        for i in range(0, len(body), 65536):
            sock.sendall(view[i : i + 65536])
            pushed[0] = i + 65536
        response = http.client.HTTPResponse(sock, method="PUT")
        response.begin()
        return response.read()

    try:
        done = in_thread(upload)
        await sleep(0.8)
        held = pushed[0]
        assert held < 16 * 1024 * 1024, f"{held} bytes accepted with the service not reading"
        service.read_gate.set()
        assert await done == b"PUT /up %d" % len(body)
    finally:
        service.read_gate.set()
        sock.close()
    assert hashlib.sha256(service.requests[0].body).digest() == hashlib.sha256(body).digest()


@pytest_twisted.ensureDeferred
async def test_stopping_ends_kept_alive_connections_after_their_request(gateway, upstreams):
    """At stop, an idle kept-alive connection is closed at once and one with a request
    in flight gets its response (with ``Connection: close``) before it closes: the stop
    does not wait for ``drain_timeout`` (10 s) on idle HTTP clients."""
    release = threading.Event()

    def answer(request):
        if request.target == "/slow":
            release.wait(10)
        return 200, [("content-length", "2")], b"ok"

    service = HttpService(upstreams, answer)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    idle = await in_thread(mesh_http, gateway, "billing", "web")
    busy = await in_thread(mesh_http, gateway, "billing", "web")
    try:
        assert (await in_thread(get, idle, "/fast"))[0] == 200
        slow = in_thread(get, busy, "/slow")
        await gateway.wait_for(lambda: any(r.target == "/slow" for r in service.requests))
        started = time.monotonic()
        stopping = defer.ensureDeferred(gateway.stop())
        await sleep(0.2)
        release.set()
        status, body, response = await slow
        await stopping
        assert time.monotonic() - started < 5
        assert (status, body) == (200, b"ok")
        assert response.getheader("connection") == "close"
        assert await in_thread(idle.sock.recv, 10) == b""  # closed, not left idling
    finally:
        release.set()
        idle.close()
        busy.close()
