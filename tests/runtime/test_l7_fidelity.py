"""L7 fidelity findings of an outside review (issue 22), each through a real gateway.

The gateway runs in-process (file catalog, builtin CA, intentions); clients are real
TLS clients holding a mesh leaf (raw HTTP/1.1 bytes, or the ``h2`` library), services
real HTTP/1.1 / HTTP/2 servers on 127.0.0.1 port 0.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted

from tests.h2_peers import H2SocketClient, H2TestService, request_head, tls_h2_socket
from tests.harness import in_thread, sni_for, tls_connect
from tests.runtime.l7_support import HttpService, link


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            out += b"<still open>"
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


@pytest.fixture
def h2_service() -> Any:
    service = H2TestService()
    yield service
    pytest_twisted.blockon(service.port.stopListening())


@pytest_twisted.ensureDeferred
async def test_denied_head_request_gets_headers_only_and_the_next_pipelined_request(
    gateway, upstreams
):
    """A HEAD request the gateway answers itself (403) gets the status and headers and
    no body (RFC 9110 §9.3.2); the GET pipelined behind it on the same HTTP/1.1
    connection is answered too (before the fix the 403's body broke h11's framing and
    the connection closed with the GET unanswered)."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "deny"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"HEAD /h HTTP/1.1\r\nHost: billing\r\n\r\n"
                b"GET /g HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n"
            )
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    first, sep, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 403") and sep
    # No body after the HEAD answer's head: the next bytes are the GET's answer.
    assert rest.startswith(b"HTTP/1.1 403"), data
    assert rest.endswith(b"RBAC: access denied"), data
    assert data.count(b"RBAC: access denied") == 1
    assert service.connections == 0


@pytest_twisted.ensureDeferred
async def test_denied_http2_head_request_gets_no_data_frame(gateway, h2_service):
    """Over HTTP/2 a denied HEAD gets a HEADERS frame that ends the stream and no DATA
    (a DATA frame on a HEAD response is a protocol error for the client); a GET on
    the same connection afterwards is answered."""
    from tests.runtime.test_l7_http2 import link as link_h2

    link_h2(gateway, h2_service.port_number, "http2", ("web", "deny"))
    await gateway.start()

    def run() -> tuple[Any, Any, Any]:
        files = gateway.client_files("web")
        client = H2SocketClient(tls_h2_socket(gateway.port, sni_for("billing"), files))
        head = client.request(request_head("billing", "/h", "HEAD"))
        client.wait(client.finished(head))
        get = client.request(request_head("billing", "/g", "GET"))
        client.wait(client.finished(get))
        return client.responses[head], client.responses[get], client.goaway

    head, get, goaway = await in_thread(run)
    assert goaway is None
    assert head.headers[b":status"] == b"403" and head.ended and bytes(head.body) == b""
    assert get.headers[b":status"] == b"403" and bytes(get.body) == b"RBAC: access denied"
    assert not h2_service.requests


def _requests_of(gateway: Any) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


@pytest_twisted.ensureDeferred
async def test_http11_connect_is_404_counted_recorded_and_not_forwarded(gateway, upstreams):
    """An HTTP/1.1 ``CONNECT`` at an L7 destination is answered 404 as Envoy's route
    table answers it (no ``connect_matcher`` route), counted as ``connect_refused`` and
    recorded; the service sees no byte and the connection serves the next request
    (before the fix the CONNECT was forwarded and a 2xx left the connection stuck)."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                b"GET /after HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n"
            )
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 404"), data
    assert b"HTTP/1.1 200" in data and data.endswith(b"GET /after 0"), data
    assert [r.target for r in service.requests] == ["/after"]
    assert b"CONNECT" not in bytes(service.raw)
    assert gateway.metric("tgw_http_bad_requests_total", reason="connect_refused") == 1
    await gateway.wait_for(lambda: len(_requests_of(gateway)) == 2)
    record = _requests_of(gateway)[0]
    assert record["method"] == "CONNECT" and record["status"] == 404


@pytest_twisted.ensureDeferred
async def test_http10_request_is_426_and_the_connection_closes(gateway, upstreams):
    """An HTTP/1.0 request is refused as Envoy refuses it when ``accept_http_10`` is off
    (Consul never enables it): 426 Upgrade Required, then the connection closes;
    counted as ``http_1_0``, recorded, and nothing reaches the service."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(b"GET /old HTTP/1.0\r\nHost: billing\r\nConnection: keep-alive\r\n\r\n")
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 426"), data
    assert not data.endswith(b"<still open>"), data
    assert service.connections == 0
    assert gateway.metric("tgw_http_bad_requests_total", reason="http_1_0") == 1
    await gateway.wait_for(lambda: len(_requests_of(gateway)) == 1)
    assert _requests_of(gateway)[0]["status"] == 426


@pytest_twisted.ensureDeferred
async def test_intentions_match_the_headers_the_service_gets(gateway, upstreams):
    """L7 intention header matches see the request as the service gets it, as Envoy's
    RBAC filter sees it after the connection manager's mutations: the XFCC element
    and ``x-forwarded-proto: https`` the gateway adds are there, a field the client's
    ``Connection`` names (hop-by-hop) is not. The service gets the same fields, plus an
    ``x-request-id``. (Before the fix the decision saw the client's raw fields.)"""
    from tests.harness import write_json

    service = HttpService(upstreams)
    link(gateway, service.port)
    write_json(
        gateway.catalog / "ixn.json",
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [
                        {
                            "Action": "deny",
                            "HTTP": {"Header": [{"Name": "x-hop", "Present": True}]},
                        },
                        {
                            "Action": "allow",
                            "HTTP": {
                                "PathPrefix": "/",
                                "Header": [
                                    {"Name": "x-forwarded-client-cert", "Present": True},
                                    {"Name": "x-forwarded-proto", "Exact": "https"},
                                ],
                            },
                        },
                    ],
                }
            ],
        },
    )
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"GET /x HTTP/1.1\r\nHost: billing\r\nConnection: x-hop, close\r\nX-Hop: 1\r\n\r\n"
            )
            return _read_until_closed(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 200"), data
    (seen,) = service.requests
    assert seen.header("x-hop") is None
    assert seen.header("x-forwarded-proto") == "https"
    xfcc = seen.header("x-forwarded-client-cert") or ""
    assert xfcc.startswith("By=spiffe://")
    # Envoy under Consul also sends the client's leaf and chain, URL-encoded PEM.
    assert ';Cert="-----BEGIN%20CERTIFICATE-----%0A' in xfcc
    assert ';Chain="-----BEGIN%20CERTIFICATE-----%0A' in xfcc
    assert len(seen.header("x-request-id") or "") == 36


@pytest_twisted.ensureDeferred
async def test_denied_expect_100_continue_is_403_and_the_connection_closes(gateway, upstreams):
    """A denied request that waits for ``100 Continue`` gets 403 with ``Connection:
    close`` and the gateway then closes the connection (the client may or may not send
    the body: only a close keeps the framing certain); no 100, nothing upstream."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "deny"))
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def run() -> bytes:
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"POST /up HTTP/1.1\r\nHost: billing\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\n\r\n"
            )
            return _read_until_closed(sock, limit=5.0)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.startswith(b"HTTP/1.1 403") and b"connection: close" in data.lower(), data
    assert b"100 Continue" not in data
    assert data.endswith(b"RBAC: access denied"), data  # closed, not "<still open>"
    assert service.connections == 0
