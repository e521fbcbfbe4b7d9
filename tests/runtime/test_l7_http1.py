"""L7 mode over HTTP/1.1 through a real gateway: mesh mTLS in, a real h11 service out.

Every test runs the gateway in-process (file catalog, builtin CA, intentions) with a
real TLS client holding a mesh leaf, and a real HTTP/1.1 service on 127.0.0.1 port 0.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import threading

import pytest_twisted

from tests.harness import (
    TRUST_DOMAIN,
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sleep,
    sni_for,
    tls_connect,
    write_json,
)
from tests.net.test_upstream_tls import SERVICE_NAME, ExternalPKI
from tests.runtime.l7_support import HttpService, get, link, mesh_http, service_defaults


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


@pytest_twisted.ensureDeferred
async def test_large_bodies_stream_both_ways_in_order(gateway, upstreams):
    """A 6 MiB chunked upload with a trailer reaches the service whole, in order, with
    its trailer; a 6 MiB response comes back whole and in order."""
    big = bytes(range(256)) * (6 * 4096)
    service = HttpService(
        upstreams,
        lambda r: (
            200,
            [("content-length", str(len(big))), ("x-got", hashlib.sha256(r.body).hexdigest())],
            big,
        ),
    )
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> tuple[bytes, bytes]:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            head = b"POST /upload HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head)
            for i in range(0, len(big), 65536):
                piece = big[i : i + 65536]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\nx-checksum: done\r\n\r\n")
            conn = http.client.HTTPConnection("billing")
            conn.sock = sock
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            return response.getheader("x-got", "").encode(), response.read()
        finally:
            sock.close()

    got, body = await in_thread(run)
    assert got == hashlib.sha256(big).hexdigest().encode()
    assert body == big
    assert service.requests[0].trailers == [("x-checksum", "done")]
    assert service.requests[0].header("transfer-encoding") == "chunked"


@pytest_twisted.ensureDeferred
async def test_service_down_is_502(gateway, upstreams):
    """No endpoint reachable: the request is answered 502 (the connection was accepted
    and authorized per request; the failure is the upstream's)."""
    link(gateway, free_port(), ("web", "allow"))
    await gateway.start()

    def run() -> int:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return get(conn, "/")[0]
        finally:
            conn.close()

    assert await in_thread(run) == 502
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 1)
    assert requests_of(gateway)[0]["status"] == 502


@pytest_twisted.ensureDeferred
async def test_request_timeout_of_the_resolver_is_504(gateway, upstreams):
    """A service-resolver ``RequestTimeout`` bounds a request: a service that answers
    later gets the client a 504."""
    release = threading.Event()

    def slow(request):
        release.wait(5)
        return 200, [("content-length", "0")], b""

    service = HttpService(upstreams, slow)
    service.cut_ok = True  # the gateway gives up on it at the timeout
    link(gateway, service.port, ("web", "allow"))
    write_json(
        gateway.catalog / "resolver.json",
        {"Kind": "service-resolver", "Name": "billing", "RequestTimeout": "300ms"},
    )
    await gateway.start()

    def run() -> int:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return get(conn, "/slow")[0]
        finally:
            conn.close()

    try:
        assert await in_thread(run) == 504
    finally:
        release.set()


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_is_answered_after_authorization(gateway, upstreams):
    """``Expect: 100-continue``: an allowed request gets ``100 Continue`` and its body
    goes through; a denied one gets the 403 without a 100 and its body never moves."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"), ("batch", "deny"))
    await gateway.start()

    def run(source: str) -> bytes:
        cert, key, root = gateway.client_files(source)
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"PUT /p HTTP/1.1\r\nHost: billing\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            first = sock.recv(65536)
            if first.startswith(b"HTTP/1.1 100"):
                sock.sendall(b"hello")
                rest = b""
                while b"PUT /p 5" not in rest:
                    rest += sock.recv(65536)
                return first + rest
            return first
        finally:
            sock.close()

    allowed = await in_thread(run, "web")
    assert allowed.startswith(b"HTTP/1.1 100") and b"PUT /p 5" in allowed
    denied = await in_thread(run, "batch")
    assert denied.startswith(b"HTTP/1.1 403")
    assert [r.body for r in service.requests] == [b"hello"]


@pytest_twisted.ensureDeferred
async def test_tcp_route_beside_an_http_one_stays_a_byte_splice(gateway, upstreams):
    """A tcp destination is still spliced byte for byte (no HTTP parsing: non-HTTP
    bytes go both ways), and it gets no request records."""
    echo_up = upstreams(hello(b"\x00raw answer\r\n\r\n"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing", "ledger"))
    write_json(
        gateway.catalog / "regs.json",
        [registration("billing", free_port()), registration("ledger", echo_up.port)],
    )
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("ledger", ("web", "allow")))
    await gateway.start()
    files = gateway.client_files("web")
    payload = b"\x00not http at all\r\n\r\n"
    answer = await in_thread(request, gateway.port, sni_for("ledger"), files, payload)
    assert answer == b"\x00raw answer\r\n\r\n"
    await gateway.wait_for(
        lambda: any(r["record_type"] == "closed" for r in gateway.access_records())
    )
    assert requests_of(gateway) == []


@pytest_twisted.ensureDeferred
async def test_tls_origination_to_an_http_service_offers_http11(gateway, upstreams, tmp_path):
    """A destination with ``CAFile`` + ``SNI``: requests reach the HTTPS service over the
    TLS strategy (verified), ALPN ``http/1.1`` is offered, and keep-alive reuses the one
    TLS connection."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    service = HttpService(upstreams, tls=ctx)
    write_json(
        gateway.catalog / "gw.json",
        gateway_entry({"Name": "billing", "CAFile": str(ext.ca_file), "SNI": SERVICE_NAME}),
    )
    write_json(gateway.catalog / "regs.json", [registration("billing", service.port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()

    def run() -> list[int]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return [get(conn, f"/s/{i}")[0] for i in range(2)]
        finally:
            conn.close()

    assert await in_thread(run) == [200, 200]
    assert service.connections == 1 and service.alpn == ["http/1.1"]


@pytest_twisted.ensureDeferred
async def test_the_service_receives_the_normalised_path_and_an_xfcc_element(gateway, upstreams):
    """Dot segments and encoded unreserved characters are normalised before the request
    goes upstream (the query is kept as sent); a path that cannot be normalised safely
    is 400 and never reaches the service. The service gets ``x-forwarded-client-cert``
    with the client's SPIFFE ID (``URI``), the gateway's (``By``) and the leaf's hash,
    appended to what the client sent (APPEND_FORWARD, Consul's default)."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> list[int]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            first = get(
                conn, "/a/./b/../%7Eitem?q=%2e%2e", headers={"X-Forwarded-Client-Cert": "By=x"}
            )
            second = get(conn, "/bad%zz")
            return [first[0], second[0]]
        finally:
            conn.close()

    assert await in_thread(run) == [200, 400]
    assert [r.target for r in service.requests] == ["/a/~item?q=%2e%2e"]
    xfcc = service.requests[0].header("x-forwarded-client-cert")
    assert xfcc is not None and xfcc.startswith("By=x,By=spiffe://")
    assert (
        "/svc/billing;Hash=" in xfcc
        and f"URI=spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web" in xfcc
    )
    assert gateway.metric("tgw_http_bad_requests_total", reason="path") == 1


@pytest_twisted.ensureDeferred
async def test_pool_full_and_queue_full_is_503(gateway, upstreams):
    """With one upstream connection allowed and no queue, a second request while the
    first holds the connection is answered 503 (``overflow``) at once."""
    gateway.site_options["http_max_upstream_connections"] = 1
    gateway.site_options["http_max_pending_requests"] = 0
    release = threading.Event()

    def held(request):
        if request.target == "/hold":
            release.wait(10)
        return 200, [("content-length", "0")], b""

    service = HttpService(upstreams, held)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def call(path: str) -> int:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return get(conn, path)[0]
        finally:
            conn.close()

    first = in_thread(call, "/hold")
    await gateway.wait_for(lambda: service.connections == 1)
    try:
        assert await in_thread(call, "/second") == 503
    finally:
        release.set()
    assert await first == 200
    assert service.connections == 1


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_connection_follows_the_catalog_to_a_new_endpoint(gateway, upstreams):
    """The service moves to another instance while a client connection stays open: its
    next request goes to the new instance (the idle pooled connection to the old one is
    closed, and new ones dial the live route's endpoints, not the handshake's)."""
    old, new = HttpService(upstreams), HttpService(upstreams)
    link(gateway, old.port, ("web", "allow"))
    await gateway.start()
    conn = await in_thread(mesh_http, gateway, "billing", "web")
    try:
        assert (await in_thread(get, conn, "/before"))[0] == 200
        write_json(gateway.catalog / "regs.json", [registration("billing", new.port)])
        await gateway.wait_for(
            lambda: any(
                e.port == new.port for _, d in gateway.site.router.routes for e in d.endpoints
            )
        )
        assert (await in_thread(get, conn, "/after"))[0] == 200
    finally:
        conn.close()
    assert [r.target for r in old.requests] == ["/before"]
    assert [r.target for r in new.requests] == ["/after"]
