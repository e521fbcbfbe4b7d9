"""L7 mode over HTTP/1.1 through a real gateway: mesh mTLS in, a real h11 service out.

Every test runs the gateway in-process (file catalog, builtin CA, intentions) with a
real TLS client holding a mesh leaf, and a real HTTP/1.1 service on 127.0.0.1 port 0.
"""

from __future__ import annotations

import socket
import ssl

import pytest_twisted

from tests.harness import (
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sleep,
    sni_for,
    tls_connect,
    write_json,
)
from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults


def link(gateway, port: int, *sources: tuple[str, str], protocol: str = "http") -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing", protocol))
    write_json(gateway.catalog / "ixn.json", intentions("billing", *sources))


def requests_of(gateway) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


@pytest_twisted.ensureDeferred
async def test_keep_alive_requests_share_one_upstream_connection(gateway, upstreams):
    """Three requests on one client connection reach the service on one pooled
    connection, each answered in full; each gets its own access-log record."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> list[tuple[int, bytes]]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return [get(conn, f"/item/{i}")[:2] for i in range(3)]
        finally:
            conn.close()

    answers = await in_thread(run)
    assert answers == [(200, f"GET /item/{i} 0".encode()) for i in range(3)]
    assert service.connections == 1
    assert [r.target for r in service.requests] == ["/item/0", "/item/1", "/item/2"]
    assert service.requests[0].header("host") == "billing"  # Host kept
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 3)
    record = requests_of(gateway)[0]
    assert record["method"] == "GET" and record["path"] == "/item/0"
    assert record["status"] == 200 and record["decision"] == "allow"
    assert record["engine"] == "intentions" and record["upstream_host"].endswith(f":{service.port}")
    assert (
        gateway.metric(
            "tgw_http_requests_total", service="billing", method_class="GET", code_class="2xx"
        )
        == 3
    )


@pytest_twisted.ensureDeferred
async def test_denied_request_is_403_and_the_connection_stays_usable(gateway, upstreams):
    """A source the intentions deny gets 403 ``RBAC: access denied`` per request, not a
    closed connection; nothing reaches the service; the next request on the same
    connection is decided again (here: denied again) and answered."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"), ("batch", "deny"))
    await gateway.start()

    def run() -> list[tuple[int, bytes]]:
        conn = mesh_http(gateway, "billing", "batch")
        try:
            first = get(conn, "/a", method="POST", body=b"payload")[:2]
            second = get(conn, "/b")[:2]
            return [first, second]
        finally:
            conn.close()

    assert await in_thread(run) == [(403, b"RBAC: access denied"), (403, b"RBAC: access denied")]
    assert service.connections == 0 and bytes(service.raw) == b""
    assert gateway.metric("tgw_http_denied_total", service="billing", reason="intentions") == 2


@pytest_twisted.ensureDeferred
async def test_intention_edit_applies_to_the_next_request_on_an_open_connection(gateway, upstreams):
    """An intention changed to deny while a connection is open: the connection is not
    closed by the live re-check, and its next request is denied."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    conn = await in_thread(mesh_http, gateway, "billing", "web")
    try:
        assert (await in_thread(get, conn, "/one"))[:2] == (200, b"GET /one 0")
        write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "deny")))
        # A new connection tells when the edited intentions are in force (file poll).
        for _ in range(100):
            if await in_thread(_probe, gateway) == 403:
                break
            await sleep(0.05)
        else:
            raise AssertionError("the edited intention never applied")
        status, body, _ = await in_thread(get, conn, "/two")
        assert (status, body) == (403, b"RBAC: access denied")
    finally:
        conn.close()
    assert "/two" not in [r.target for r in service.requests]


def _probe(gateway) -> int:
    conn = mesh_http(gateway, "billing", "web")
    try:
        return get(conn, "/probe")[0]
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(gateway, upstreams):
    """Three requests written in one go are answered in order on the same connection."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"GET /1 HTTP/1.1\r\nHost: billing\r\n\r\n"
                b"GET /2 HTTP/1.1\r\nHost: billing\r\n\r\n"
                b"GET /3 HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n"
            )
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.count(b"HTTP/1.1 200") == 3
    assert data.index(b"GET /1 0") < data.index(b"GET /2 0") < data.index(b"GET /3 0")
    assert [r.target for r in service.requests] == ["/1", "/2", "/3"]


@pytest_twisted.ensureDeferred
async def test_bad_framing_is_400_and_nothing_reaches_the_service(gateway, upstreams):
    """Content-Length together with Transfer-Encoding (a smuggling shape) is answered
    400 and counted; the service sees no byte."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"POST /x HTTP/1.1\r\nHost: billing\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
            )
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 400")
    assert service.connections == 0 and bytes(service.raw) == b""
    assert (
        gateway.metric(
            "tgw_http_bad_requests_total", reason="content_length_with_transfer_encoding"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_oversize_request_head_is_431(gateway, upstreams):
    """A request head over ``max_request_headers_kb`` is refused with 431, counted as
    ``headers_too_large``; the service sees no byte."""
    gateway.site_options["max_request_headers_kb"] = 1
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: billing\r\nX-Big: " + b"a" * 2048 + b"\r\n\r\n")
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 431")
    assert bytes(service.raw) == b""
    assert gateway.metric("tgw_http_bad_requests_total", reason="headers_too_large") == 1


def _read_until_closed(sock: ssl.SSLSocket | socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ssl.SSLError, OSError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
