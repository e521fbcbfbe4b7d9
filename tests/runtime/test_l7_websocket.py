"""WebSocket (HTTP/1.1 Upgrade) at an L7 destination, through a real gateway.

Every test runs the gateway in-process (file catalog, builtin CA, intentions) with a
real TLS client holding a mesh leaf, speaking WebSocket with wsproto, and a real
WebSocket service (wsproto, threads) on 127.0.0.1 port 0 (``tests/runtime/ws_support.py``).
Consul's Envoy forwards ``Upgrade: websocket`` (``upgrade_configs`` on every HTTP
listener), authorized per request by the L7 intentions; after ``101`` the connection
is a byte stream both ways.
"""

from __future__ import annotations

import hashlib
import os

import pytest_twisted
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, TextMessage

from tests.harness import in_thread, sni_for, tls_connect, write_json
from tests.runtime.l7_support import HttpService, link
from tests.runtime.ws_support import WsClient, WsService, read_to_end


def requests_of(gateway) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


def ws_only_under(gateway, prefix: str) -> None:
    """``web`` may reach ``billing`` under ``prefix`` only (an L7 intention; anything
    else falls to the default policy, deny)."""
    write_json(
        gateway.catalog / "ixn.json",
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": prefix}}],
                }
            ],
        },
    )


def raw_exchange(gateway, payload: bytes) -> bytes:
    """Send ``payload`` on a mesh connection and read until the gateway closes."""
    cert, key, root = gateway.client_files("web")
    sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
    try:
        sock.sendall(payload)
        return read_to_end(sock)
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_allowed_upgrade_carries_messages_both_ways_including_one_mebibyte(
    gateway, upstreams
):
    """An upgrade allowed by a path permission is answered ``101`` by the service; text
    and a 1 MiB binary message go through and come back intact, the closing handshake
    works, and the request's one record says 101 with the bytes moved after the switch
    (exactly what the client sent and the service sent). The service got
    ``Connection: upgrade``, ``Upgrade: websocket`` and the gateway's XFCC."""
    service = WsService(upstreams)
    link(gateway, service.port)
    ws_only_under(gateway, "/ws/")
    await gateway.start()
    big = os.urandom(1 << 20)

    def run() -> tuple[object, object, object, object, int]:
        client = WsClient(gateway)
        try:
            answer, _ = client.handshake("/ws/chat")
            client.send(TextMessage(data="hello"))
            text = client.message()
            client.send(BytesMessage(data=big))
            echoed = client.message()
            client.send(CloseConnection(code=1000))
            closed = client.message()
            return answer, text, echoed, closed, client.sent
        finally:
            client.close()

    answer, text, echoed, closed, sent = await in_thread(run)
    assert isinstance(answer, AcceptConnection)
    assert text == "hello"
    assert isinstance(echoed, bytes) and hashlib.sha256(echoed).digest() == (
        hashlib.sha256(big).digest()
    )
    assert closed is None  # the service's close frame answered ours
    (head,) = service.heads
    lowered = head.lower()
    assert b"\r\nupgrade: websocket" in lowered and b"\r\nconnection: upgrade" in lowered
    assert b"\r\nx-forwarded-client-cert: by=spiffe://" in lowered
    await in_thread(service.ended.wait, 10)
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 1)
    (record,) = requests_of(gateway)
    assert record["status"] == 101 and record["decision"] == "allow"
    assert record["path"] == "/ws/chat" and record["error"] is None
    assert record["bytes_request"] == sent == service.received
    assert record["bytes_response"] == service.sent
    assert (
        gateway.metric(
            "tgw_http_requests_total", service="billing", method_class="GET", code_class="1xx"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_denied_upgrade_is_403_and_the_connection_stays_http(gateway, upstreams):
    """An upgrade outside the permitted path is answered ``403 RBAC: access denied``;
    nothing reaches the service and the next (allowed, plain) request on the same
    connection is served."""
    service = WsService(upstreams)
    link(gateway, service.port)
    ws_only_under(gateway, "/ws/")
    await gateway.start()

    def run() -> tuple[object, bytes, bytes]:
        client = WsClient(gateway)
        try:
            answer, body = client.handshake("/admin")
            client.sock.sendall(
                b"GET /ws/plain HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n"
            )
            return answer, body, client.read_to_end()
        finally:
            client.close()

    answer, body, after = await in_thread(run)
    assert getattr(answer, "status_code", None) == 403 and body == b"RBAC: access denied"
    assert after.startswith(b"HTTP/1.1 200") and after.endswith(b"plain")
    assert service.heads == [] and service.plain == ["/ws/plain"]
    assert gateway.metric("tgw_http_denied_total", service="billing") == 1


@pytest_twisted.ensureDeferred
async def test_service_refusing_with_400_is_an_ordinary_response(gateway, upstreams):
    """The service answers the upgrade ``400`` (and closes): the client gets that answer
    and its connection stays HTTP; the next request goes on a new upstream connection."""
    service = WsService(upstreams, mode="reject")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> tuple[object, bytes, bytes]:
        client = WsClient(gateway)
        try:
            answer, body = client.handshake("/ws/chat")
            client.sock.sendall(b"GET /next HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n")
            return answer, body, client.read_to_end()
        finally:
            client.close()

    answer, body, after = await in_thread(run)
    assert getattr(answer, "status_code", None) == 400 and body == b"not allowed"
    assert after.startswith(b"HTTP/1.1 200") and after.endswith(b"plain")
    assert service.plain == ["/next"] and service.connections == 2


@pytest_twisted.ensureDeferred
async def test_service_ignoring_the_upgrade_with_200_keeps_both_connections_http(
    gateway, upstreams
):
    """A service that does not speak WebSocket answers the upgrade request ``200``: the
    answer is relayed, and the next request of the client reuses the same upstream
    connection (it never switched)."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> bytes:
        cert, key, root = gateway.client_files("web")
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: billing\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
                b"GET /next HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n"
            )
            return read_to_end(sock)
        finally:
            sock.close()

    data = await in_thread(run)
    assert data.count(b"HTTP/1.1 200") == 2 and b"101" not in data.split(b"\r\n")[0]
    assert [r.target for r in service.requests] == ["/ws", "/next"]
    assert service.requests[0].header("upgrade") == "websocket"
    assert service.connections == 1


@pytest_twisted.ensureDeferred
async def test_service_hanging_up_ends_the_tunnel(gateway, upstreams):
    """The service sends a message and closes: the client gets the message, then the end
    of the stream; the request's record is written (status 101)."""
    service = WsService(upstreams, mode="hangup")
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> tuple[object, object, object]:
        client = WsClient(gateway)
        try:
            answer, _ = client.handshake("/ws")
            return answer, client.message(), client.message()
        finally:
            client.close()

    answer, first, then = await in_thread(run)
    assert isinstance(answer, AcceptConnection) and first == "bye" and then is None
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 1)
    (record,) = requests_of(gateway)
    assert record["status"] == 101 and record["bytes_response"] == service.sent


@pytest_twisted.ensureDeferred
async def test_client_leaving_closes_the_service_connection(gateway, upstreams):
    """The client drops its connection mid-session (no closing handshake): the service
    sees the end of its stream and the request's record is written."""
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> object:
        client = WsClient(gateway)
        try:
            answer, _ = client.handshake("/ws")
            client.send(TextMessage(data="one"))
            assert client.message() == "one"
            return answer
        finally:
            client.close()

    assert isinstance(await in_thread(run), AcceptConnection)
    assert await in_thread(service.ended.wait, 10)
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 1)
    assert requests_of(gateway)[0]["status"] == 101


@pytest_twisted.ensureDeferred
async def test_upgraded_upstream_connection_is_never_reused(gateway, upstreams):
    """While a WebSocket is open, a plain request from another client gets its own
    upstream connection; after the WebSocket ended, plain requests reuse only that
    plain connection: the upgraded connection never went back to the pool."""
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def plain(target: str) -> bytes:
        return raw_exchange(
            gateway, f"GET {target} HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n".encode()
        )

    def run() -> list[bytes]:
        client = WsClient(gateway)
        try:
            client.handshake("/ws")
            during = plain("/during")
            client.send(TextMessage(data="still here"))
            assert client.message() == "still here"
            client.send(CloseConnection(code=1000))
            client.message()
        finally:
            client.close()
        service.ended.wait(10)
        return [during, plain("/after")]

    answers = await in_thread(run)
    assert all(a.startswith(b"HTTP/1.1 200") and a.endswith(b"plain") for a in answers)
    assert service.plain == ["/during", "/after"] and service.connections == 2


@pytest_twisted.ensureDeferred
async def test_other_upgrade_tokens_are_refused_with_403_and_a_close(gateway, upstreams):
    """``Upgrade: foo`` (no ``upgrade_configs`` entry under Consul) is answered ``403``
    with an empty body and the connection closes, before authorization; nothing reaches
    the service; counted as a bad request ``upgrade_refused``."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    data = await in_thread(
        raw_exchange,
        gateway,
        b"GET / HTTP/1.1\r\nHost: billing\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
        b"GET /never HTTP/1.1\r\nHost: billing\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 403") and data.endswith(b"\r\n\r\n")
    assert b"content-length: 0" in data.lower() and data.count(b"HTTP/1.1") == 1
    assert service.connections == 0
    assert gateway.metric("tgw_http_bad_requests_total", reason="upgrade_refused") == 1


@pytest_twisted.ensureDeferred
async def test_h2c_upgrade_is_served_as_a_plain_request(gateway, upstreams):
    """``Upgrade: h2c`` is never switched (Envoy's HTTP/1 codec strips it): the service
    gets the request without ``Upgrade``, ``HTTP2-Settings`` or the ``upgrade`` token,
    and the connection stays usable."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    data = await in_thread(
        raw_exchange,
        gateway,
        b"GET /a HTTP/1.1\r\nHost: billing\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n",
    )
    assert data.count(b"HTTP/1.1 200") == 2
    first = service.requests[0]
    assert first.header("upgrade") is None and first.header("http2-settings") is None
    assert first.header("connection") is None


@pytest_twisted.ensureDeferred
async def test_websocket_to_an_http2_destination_is_refused(gateway, upstreams):
    """An ``http2`` destination's service speaks HTTP/2, which cannot carry an HTTP/1.1
    upgrade (tgw does not speak RFC 8441's extended CONNECT): a WebSocket upgrade is
    refused as an unsupported one (403, close) and never reaches the service."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"), protocol="http2")
    await gateway.start()
    data = await in_thread(
        raw_exchange,
        gateway,
        b"GET /ws HTTP/1.1\r\nHost: billing\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 403") and data.count(b"HTTP/1.1") == 1
    assert service.connections == 0
    assert gateway.metric("tgw_http_bad_requests_total", reason="upgrade_refused") == 1


WS_ADDON = """
seen = []


def tgw_http_requestheaders(flow):
    seen.append(("requestheaders", flow.request.headers.get("upgrade")))
    flow.request.headers.remove("upgrade")  # set again by the gateway: not the addon's


def tgw_http_responseheaders(flow):
    seen.append(("responseheaders", flow.response.status))
    if flow.request.path == "/ws/no":
        flow.respond(409, b"no tunnel for you", addon="gatekeeper")


def tgw_http_response(flow):
    seen.append(("response", flow.response.status))
"""


@pytest_twisted.ensureDeferred
async def test_addons_see_the_upgrade_and_an_answer_to_the_101_keeps_http(
    gateway, upstreams, tmp_path
):
    """The HTTP addon hooks run for an upgrade: ``tgw_http_requestheaders`` sees
    ``upgrade: websocket`` and cannot remove it (the service still gets it);
    ``tgw_http_response`` runs with the 101 as the tunnel starts. An addon that answers
    in ``tgw_http_responseheaders`` instead of the 101 gets its answer to the client,
    whose connection stays HTTP (a next request is served)."""
    addons = tmp_path / "ws-addons"
    addons.mkdir()
    (addons / "wsaddon.py").write_text(WS_ADDON)
    gateway.plugin_paths = [str(addons)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "wsaddon"]
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    seen = gateway.site.stack.pm.get_plugin("wsaddon").seen

    def run() -> tuple[object, object, bytes, object]:
        client = WsClient(gateway)
        try:
            answer, _ = client.handshake("/ws/yes")
            client.send(TextMessage(data="hi"))
            echoed = client.message()
        finally:
            client.close()
        other = WsClient(gateway)
        try:
            refused, body = other.handshake("/ws/no")
            other.sock.sendall(b"GET /next HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n")
            return answer, echoed, body, (refused, other.read_to_end())
        finally:
            other.close()

    answer, echoed, body, (refused, after) = await in_thread(run)
    assert isinstance(answer, AcceptConnection) and echoed == "hi"
    assert getattr(refused, "status_code", None) == 409 and body == b"no tunnel for you"
    assert after.startswith(b"HTTP/1.1 200") and after.endswith(b"plain")
    assert all(b"\r\nupgrade: websocket" in h.lower() for h in service.heads)
    assert len(service.heads) == 2 and service.plain == ["/next"]
    assert seen[:3] == [
        ("requestheaders", "websocket"),
        ("responseheaders", 101),
        ("response", 101),
    ]
    assert seen[3:] == [
        ("requestheaders", "websocket"),
        ("responseheaders", 101),
        ("response", 409),
        ("requestheaders", None),  # GET /next, a plain request on the same connection
        ("responseheaders", 200),
        ("response", 200),
    ]


@pytest_twisted.ensureDeferred
async def test_a_101_before_the_request_ended_is_a_502_and_no_tunnel(gateway, upstreams):
    """A service that switches while the upgrade request's body is still coming (5 of
    its 10 bytes sent): the gateway cannot frame the rest, so the client gets ``502``
    and the upstream connection is closed; no client byte after the request head goes
    to the service as tunnel data."""
    got: list[bytes] = []

    def handle(sock, up) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        rest = data.partition(b"\r\n\r\n")[2]
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except OSError:
            pass
        got.append(rest)

    service = upstreams(handle)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> bytes:
        cert, key, root = gateway.client_files("web")
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        try:
            sock.sendall(
                b"POST /ws HTTP/1.1\r\nHost: billing\r\nConnection: upgrade\r\n"
                b"Upgrade: websocket\r\nContent-Length: 10\r\n\r\n12345"
            )
            data = sock.recv(65536)
            sock.sendall(b"67890" + b"tunnel bytes?")
            return data
        finally:
            sock.close()

    answer = await in_thread(run)
    assert answer.startswith(b"HTTP/1.1 502")
    await in_thread(service.done.wait, 10)
    assert got and b"tunnel" not in got[0] and b"67890" not in got[0]
