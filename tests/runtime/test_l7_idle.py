"""An idle kept-alive HTTP/1.1 client connection at an L7 destination, through a real
gateway (file catalog, builtin CA, intentions; a real h11 service on 127.0.0.1 port 0;
a real TLS client with a mesh leaf): the wait between requests is governed by the
site's ``idle_timeout``, not by ``request_head_timeout``."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted

from tests.h2_peers import H2SocketClient, H2TestService, request_head, tls_h2_socket
from tests.harness import in_thread, sni_for
from tests.runtime.l7_support import HttpService, get, link, mesh_http

HEAD_TIMEOUT = 0.2
IDLE_TIMEOUT = 1.2


@pytest_twisted.ensureDeferred
async def test_a_pause_between_requests_longer_than_the_head_timeout_keeps_the_connection(
    gateway, upstreams
):
    """With ``request_head_timeout`` 0.2 s and ``idle_timeout`` 1.2 s: a client that
    waits 0.6 s between two requests gets both answered on one connection; then, idle,
    the connection is closed by ``idle_timeout`` (not before it; counted in
    ``tgw_idle_timeouts_total``, close cause ``idle_timeout``)."""
    gateway.site_options = {"request_head_timeout": f"{HEAD_TIMEOUT}s", "idle_timeout": "1.2s"}
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> tuple[list[int], float]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            first = get(conn, "/one")[0]
            time.sleep(HEAD_TIMEOUT * 3)
            second = get(conn, "/two")[0]
            idle_from = time.monotonic()
            assert conn.sock is not None
            conn.sock.settimeout(10)
            while conn.sock.recv(4096):  # until the gateway closes it
                pass
            return [first, second], time.monotonic() - idle_from
        finally:
            conn.close()

    statuses, idle_for = await in_thread(run)
    assert statuses == [200, 200]
    assert [r.target for r in service.requests] == ["/one", "/two"]
    assert IDLE_TIMEOUT <= idle_for < IDLE_TIMEOUT + 3
    await gateway.wait_for(lambda: gateway.metric("tgw_idle_timeouts_total") == 1)
    closed = [r for r in gateway.access_records() if r.get("record_type") == "closed"]
    assert [r["close_cause"] for r in closed] == ["idle_timeout"]


@pytest.fixture
def h2_service() -> Any:
    service = H2TestService()
    yield service
    pytest_twisted.blockon(service.port.stopListening())


@pytest_twisted.ensureDeferred
async def test_an_http2_connection_idle_longer_than_the_head_timeout_keeps_serving(
    gateway, h2_service
):
    """HTTP/2 (ALPN h2) with ``request_head_timeout`` 0.2 s: a client that waits 0.6 s
    between two streams gets both answered on the one connection (no head deadline
    applies to an idle HTTP/2 connection either)."""
    gateway.site_options = {"request_head_timeout": f"{HEAD_TIMEOUT}s", "idle_timeout": "1h"}
    link(gateway, h2_service.port_number, ("web", "allow"), protocol="http2")
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> list[bytes]:
        client = H2SocketClient(tls_h2_socket(gateway.port, sni_for("billing"), files))
        bodies = []
        for n in range(2):
            if n:
                time.sleep(HEAD_TIMEOUT * 3)
            sid = client.request(request_head("billing", f"/{n}"), body=b"ping%d" % n)
            client.wait(client.finished(sid))
            bodies.append(bytes(client.responses[sid].body))
        return bodies

    assert await in_thread(run) == [b"ping0", b"ping1"]
    assert len(h2_service.connections) == 1
