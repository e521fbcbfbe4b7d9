"""L7 mode over HTTP/2 and gRPC through a real gateway: mesh mTLS in, HTTP/2 out.

The gateway runs in-process (file catalog, builtin CA, intentions). Clients are real:
the ``h2`` library over Python's ssl with a mesh leaf, and ``grpcio`` with the mesh
client certificate; services are a real ``h2`` server and a real ``grpcio`` server
on 127.0.0.1 port 0, spoken to with prior knowledge (plain TCP).
"""

from __future__ import annotations

import hashlib
import socket
from concurrent import futures
from typing import Any

import grpc
import pytest
import pytest_twisted

from gwcore.net import h2_upstream
from gwcore.net.h2_link import STREAM_WINDOW
from gwcore.plugins.builtin_ca import load_or_create_ca
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.h2_peers import H2SocketClient, H2TestService, pattern, request_head, tls_h2_socket
from tests.harness import (
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sleep,
    sni_for,
    write_json,
)
from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults


def link(gateway: Any, port: int, protocol: str, *sources: tuple[str, str]) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing", protocol))
    write_json(gateway.catalog / "ixn.json", intentions("billing", *sources))


def requests_of(gateway: Any) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


def h2_client(gateway: Any, source: str = "web") -> H2SocketClient:
    files = gateway.client_files(source)
    return H2SocketClient(tls_h2_socket(gateway.port, sni_for("billing"), files))


@pytest.fixture
def h2_service() -> Any:
    service = H2TestService()
    yield service
    pytest_twisted.blockon(service.port.stopListening())


@pytest_twisted.ensureDeferred
async def test_h2_streams_through_the_gateway_with_trailers_and_authority(gateway, h2_service):
    """Ten concurrent streams on one mesh connection (ALPN h2) reach an http2 service
    on one upstream connection, bodies echoed, the service's trailers forwarded,
    ``:authority`` kept; each request gets its access-log record with ``HTTP/2``."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> list[Any]:
        client = h2_client(gateway)
        sids = [
            client.request(request_head("billing.example", f"/item/{i}"), keep_open=True)
            for i in range(10)
        ]
        for i, sid in enumerate(sids):
            client.send_body(sid, f"payload-{i}".encode() * 50)
        client.wait(client.finished(*sids))
        return [client.responses[s] for s in sids]

    responses = await in_thread(run)
    for i, response in enumerate(responses):
        assert response.headers[b":status"] == b"200", response
        assert bytes(response.body) == f"payload-{i}".encode() * 50
        assert response.trailers == {b"x-trailer": b"done"}
        assert response.headers[b"x-authority"] == b"billing.example"
        assert response.headers[b"x-path"] == f"/item/{i}".encode()
    assert len(h2_service.connections) == 1
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 10)
    record = requests_of(gateway)[0]
    assert record["status"] == 200 and record["decision"] == "allow"


@pytest_twisted.ensureDeferred
async def test_h2_denied_request_is_403_and_grpc_gets_status_7(gateway, h2_service):
    """A denied source gets 403 ``RBAC: access denied`` on a plain HTTP/2 request and
    a trailers-only ``grpc-status: 7`` on a gRPC one, on the same connection; the
    service sees neither."""
    link(gateway, h2_service.port_number, "grpc", ("web", "deny"))
    await gateway.start()

    def run() -> tuple[Any, Any]:
        client = h2_client(gateway)
        plain = client.request(request_head("billing", "/x", "GET"))
        client.wait(client.finished(plain))
        call = client.request(
            request_head(
                "billing", "/pkg.Svc/Call", content_type="application/grpc", te="trailers"
            ),
            body=b"\x00\x00\x00\x00\x00",
        )
        client.wait(client.finished(call))
        return client.responses[plain], client.responses[call]

    plain, call = await in_thread(run)
    assert plain.headers[b":status"] == b"403" and bytes(plain.body) == b"RBAC: access denied"
    assert call.headers == {
        b":status": b"200",
        b"content-type": b"application/grpc",
        b"grpc-status": b"7",
        b"grpc-message": b"RBAC: access denied",
    }
    assert not h2_service.requests


class GrpcService:
    """A grpcio server with generic handlers (bytes in, bytes out; no protoc)."""

    def __init__(self) -> None:
        self.seen_metadata: list[dict[str, str]] = []
        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "Count": grpc.unary_stream_rpc_method_handler(self.count),
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def unary(self, request: bytes, context: Any) -> bytes:
        self.seen_metadata.append(dict(context.invocation_metadata()))
        context.send_initial_metadata((("x-initial", "hello"),))
        context.set_trailing_metadata((("x-trailing", "bye"),))
        return b"echo:" + request

    def count(self, request: bytes, context: Any) -> Any:
        context.set_trailing_metadata((("x-count", request.decode()),))
        for i in range(int(request)):
            yield f"item-{i}".encode()


@pytest.fixture
def grpc_service() -> Any:
    service = GrpcService()
    yield service
    service.server.stop(None)


def serve_named_leaf(gateway: Any) -> None:
    """Certificates from ``file_certs``: billing's leaf also names its SNI as a DNS SAN.

    grpcio always checks the server's name (``grpc.ssl_target_name_override`` sets the
    SNI and the name to check) and a mesh leaf carries only a SPIFFE URI, so the
    gateway presents a leaf from the same mesh CA that has the SNI as a DNS name too.
    """
    cert, key = load_or_create_ca(gateway.root / "ca", TRUST_DOMAIN)
    ca = MeshCA(TRUST_DOMAIN, cert, key)
    leaf = ca.leaf("billing", dns_names=[sni_for("billing")])
    ca.write(gateway.root / "served", "billing", leaf)
    ca.write_root(gateway.root / "served" / "root.pem")
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = """
[sites.main.file_certs]
roots = ["served/root.pem"]
poll_interval = "0.1s"

[sites.main.file_certs.leaves]
billing = { cert = "served/billing.pem", key = "served/billing-key.pem" }
"""


def grpc_channel(gateway: Any, source: str) -> grpc.Channel:
    cert, key, root = gateway.client_files(source)
    credentials = grpc.ssl_channel_credentials(
        root.read_bytes(), key.read_bytes(), cert.read_bytes()
    )
    return grpc.secure_channel(
        f"127.0.0.1:{gateway.port}",
        credentials,
        options=[("grpc.ssl_target_name_override", sni_for("billing"))],
    )


@pytest_twisted.ensureDeferred
async def test_grpc_calls_through_the_gateway(gateway, grpc_service):
    """A grpcio client with the mesh certificate calls a grpcio service behind a grpc
    destination: a unary call (initial and trailing metadata arrive), a
    server-streaming call (every message, then its trailers), and a call from a
    denied source fails with PERMISSION_DENIED ``RBAC: access denied``."""
    link(gateway, grpc_service.port, "grpc", ("web", "allow"), ("api", "deny"))
    serve_named_leaf(gateway)
    await gateway.start()

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with grpc_channel(gateway, "web") as channel:
            unary = channel.unary_unary("/test.Echo/Unary")
            reply, call = unary.with_call(b"ping", timeout=10, metadata=(("x-caller", "web"),))
            out["unary"] = reply
            out["initial"] = dict(call.initial_metadata())
            out["trailing"] = dict(call.trailing_metadata())
            stream = channel.unary_stream("/test.Echo/Count")(b"5", timeout=10)
            out["stream"] = list(stream)
            out["stream_trailing"] = dict(stream.trailing_metadata())
        with grpc_channel(gateway, "api") as channel:
            try:
                channel.unary_unary("/test.Echo/Unary")(b"ping", timeout=10)
            except grpc.RpcError as error:
                out["denied"] = (error.code(), error.details())
        return out

    out = await in_thread(run)
    assert out["unary"] == b"echo:ping"
    assert out["initial"]["x-initial"] == "hello"
    assert out["trailing"]["x-trailing"] == "bye"
    assert out["stream"] == [f"item-{i}".encode() for i in range(5)]
    assert out["stream_trailing"]["x-count"] == "5"
    assert out["denied"] == (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")
    assert grpc_service.seen_metadata[0]["x-caller"] == "web"
    assert len(grpc_service.seen_metadata) == 1


@pytest_twisted.ensureDeferred
async def test_h2_prior_knowledge_without_alpn_is_served(gateway, h2_service):
    """A client that agreed no ALPN but opens with the HTTP/2 preface is served HTTP/2
    (RFC 9113 §3.4)."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> Any:
        sock = tls_h2_socket(gateway.port, sni_for("billing"), files, alpn=())
        assert sock.selected_alpn_protocol() is None
        client = H2SocketClient(sock)
        sid = client.request(request_head("billing", "/pk"), body=b"prior")
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(run)
    assert bytes(response.body) == b"prior" and response.trailers == {b"x-trailer": b"done"}


@pytest_twisted.ensureDeferred
async def test_h2_slow_client_stalls_the_service_through_windows(gateway, h2_service):
    """A client that stops acknowledging an 8 MiB response: the service is stalled by
    the HTTP/2 windows (most of the body is still unsent at the service), and when the
    client reads again every byte arrives, in order, with the trailers."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()
    size = 8 * 1024 * 1024
    box: list[Any] = []

    def start() -> int:
        client = h2_client(gateway)
        box.append(client)
        client.reading.clear()
        sid = client.request(request_head("billing", "/big", "GET", x_test="big", x_size=str(size)))
        client.wait(lambda: client.received >= 65535)
        return sid

    sid = await in_thread(start)
    await gateway.wait_for(
        lambda: bool(h2_service.connections and h2_service.connections[0].pending)
    )
    await sleep(0.3)  # time enough for an unbounded relay to pull megabytes
    unsent = sum(len(b) for b in h2_service.connections[0].pending.values())
    # What left the service: at most the gateway's windows plus the client's 64 KiB.
    assert size - unsent <= 2 * 1024 * 1024
    client = box[0]

    def finish() -> Any:
        client.read_again()
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(finish)
    assert len(response.body) == size
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(pattern(size)).digest()
    assert response.trailers == {b"x-trailer": b"done"}


@pytest_twisted.ensureDeferred
async def test_h2_upload_to_a_slow_service_blocks_the_client(gateway, h2_service):
    """A 4 MiB upload to a service that stops reading: the client can send no more than
    the windows allow (the service's 64 KiB plus the gateway's stream window, so the
    gateway holds at most that), and once the service reads again the whole body
    arrives intact."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()
    h2_service.reading = False
    body = bytes(range(256)) * (4 * 4096)
    box: list[H2SocketClient] = []

    def upload() -> Any:
        client = h2_client(gateway)
        box.append(client)
        sid = client.request(request_head("billing", "/up"), keep_open=True)
        client.send_body(sid, body)
        client.wait(client.finished(sid))
        return client.responses[sid]

    done = in_thread(upload)
    await gateway.wait_for(
        lambda: bool(h2_service.requests) and len(h2_service.requests[0].body) >= 65535
    )
    await sleep(0.3)
    assert len(h2_service.requests[0].body) == 65535
    # The service's window plus the gateway's stream window, not the 4 MiB body.
    assert box[0].sent <= 65535 + STREAM_WINDOW
    assert not done.called
    h2_service.read_again()
    response = await done
    assert response.headers[b"x-request-sha256"] == hashlib.sha256(body).hexdigest().encode()


@pytest_twisted.ensureDeferred
async def test_client_reset_through_the_gateway_cancels_the_upstream_stream(gateway, h2_service):
    """RST_STREAM from the client while the service holds its request resets the
    upstream stream with CANCEL; the client's connection serves the next request."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()
    box: list[Any] = []

    def send() -> int:
        client = h2_client(gateway)
        box.append(client)
        return client.request(request_head("billing", "/hold", x_test="hold"), body=b"x")

    sid = await in_thread(send)
    await gateway.wait_for(lambda: bool(h2_service.requests) and h2_service.requests[0].ended)

    def reset_then_again() -> Any:
        client = box[0]
        client.conn.reset_stream(sid)
        client.flush()
        again = client.request(request_head("billing", "/after"), body=b"next")
        client.wait(client.finished(again))
        return client.responses[again]

    again = await in_thread(reset_then_again)
    assert bytes(again.body) == b"next"
    await gateway.wait_for(lambda: h2_service.requests[0].reset is not None)
    assert h2_service.requests[0].reset == 8  # CANCEL


@pytest_twisted.ensureDeferred
async def test_upstream_goaway_through_the_gateway(gateway, h2_service):
    """A service that answers a request with GOAWAY (last stream 0): that request gets
    503 (refused, safe to retry), and the next one goes on a new upstream connection."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> tuple[Any, Any]:
        client = h2_client(gateway)
        first = client.request(request_head("billing", "/a", x_test="goaway"), body=b"1")
        client.wait(client.finished(first))
        second = client.request(request_head("billing", "/b"), body=b"2")
        client.wait(client.finished(second))
        return client.responses[first], client.responses[second]

    first, second = await in_thread(run)
    assert first.headers[b":status"] == b"503"
    assert bytes(second.body) == b"2"
    assert len(h2_service.connections) == 2


@pytest_twisted.ensureDeferred
async def test_http1_client_to_an_http2_destination(gateway, h2_service):
    """A client that speaks HTTP/1.1 (no ALPN, no preface) to an http2 destination is
    served HTTP/1.1 while the gateway speaks HTTP/2 to the service: its Host becomes
    ``:authority``."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> tuple[int, bytes, Any]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return get(conn, "/via-h1", method="POST", body=b"hello h2")
        finally:
            conn.close()

    status, body, response = await in_thread(run)
    assert (status, body) == (200, b"hello h2")
    assert response.getheader("x-authority") == "billing"
    assert h2_service.requests[0].headers[b":path"] == b"/via-h1"


def http1_only(sock: socket.socket, upstream: Any) -> None:
    """A service that speaks only HTTP/1.1: the h2 preface gets a 400 and a close."""
    sock.recv(65536)
    sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    sock.close()


def silent(sock: socket.socket, upstream: Any) -> None:
    """A service that accepts and never says anything (until the peer closes)."""
    while sock.recv(65536):
        pass


@pytest.mark.parametrize("behaviour", [http1_only, silent])
@pytest_twisted.ensureDeferred
async def test_a_service_that_never_speaks_http2_is_502_once(
    gateway, upstreams, monkeypatch, behaviour
):
    """An http2 destination whose service answers the preface with HTTP/1.1, or says
    nothing at all (given ``SETTINGS_TIMEOUT``), gets the waiting request a 502;
    the pool does not redial it in a loop."""
    monkeypatch.setattr(h2_upstream, "SETTINGS_TIMEOUT", 0.3)
    service = upstreams(behaviour)
    link(gateway, service.port, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> Any:
        client = h2_client(gateway)
        sid = client.request(request_head("billing", "/x", "GET"))
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(run)
    assert response.headers[b":status"] == b"502"
    await sleep(0.5)
    assert service.accepted == 1


@pytest_twisted.ensureDeferred
async def test_grpc_method_denied_by_an_l7_intention(gateway, grpc_service):
    """An L7 intention (Consul's ``Permissions``) allows ``/test.Echo/Count`` and denies
    ``/test.Echo/Unary`` for the same source: grpcio gets PERMISSION_DENIED with
    ``RBAC: access denied`` on one method and its stream on the other, on one
    channel, decided per call."""
    link(gateway, grpc_service.port, "grpc")
    write_json(
        gateway.catalog / "ixn.json",
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [
                        {"Action": "deny", "HTTP": {"PathExact": "/test.Echo/Unary"}},
                        {"Action": "allow", "HTTP": {"PathPrefix": "/test.Echo/"}},
                    ],
                }
            ],
        },
    )
    serve_named_leaf(gateway)
    await gateway.start()

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with grpc_channel(gateway, "web") as channel:
            try:
                channel.unary_unary("/test.Echo/Unary")(b"ping", timeout=10)
            except grpc.RpcError as error:
                out["unary"] = (error.code(), error.details())
            out["count"] = list(channel.unary_stream("/test.Echo/Count")(b"2", timeout=10))
        return out

    out = await in_thread(run)
    assert out["unary"] == (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")
    assert out["count"] == [b"item-0", b"item-1"]
    assert grpc_service.seen_metadata == []  # Unary never reached the service
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 2)
    records = {r["path"]: r for r in requests_of(gateway)}
    assert records["/test.Echo/Unary"]["decision"] == "deny"
    assert records["/test.Echo/Count"]["protocol"] == "HTTP/2"


@pytest_twisted.ensureDeferred
async def test_h2_protocol_error_is_counted_through_the_gateway(gateway, h2_service):
    """A header list over ``max_request_headers_kb`` ends the HTTP/2 connection with
    GOAWAY and counts ``header_list_too_large`` in ``tgw_http_bad_requests_total``."""
    gateway.site_options["max_request_headers_kb"] = 1
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> Any:
        client = h2_client(gateway)
        client.request(request_head("billing", "/", "GET", x_big="v" * 4000))
        client.wait(lambda: False)
        return client.goaway

    goaway = await in_thread(run)
    assert goaway is not None and goaway.error_code != 0
    await gateway.wait_for(
        lambda: gateway.metric("tgw_http_bad_requests_total", reason="header_list_too_large") == 1
    )
    assert not h2_service.requests


@pytest_twisted.ensureDeferred
async def test_h2_prior_knowledge_to_an_http_destination_reaches_an_http1_service(
    gateway, upstreams
):
    """An HTTP/2 client (prior knowledge) at an ``http`` destination is translated to
    HTTP/1.1 for the service: ``Host`` comes from ``:authority`` (RFC 9113 §8.3.1), and a
    body of unknown length goes chunked, so a bodiless GET and a POST with a body both
    reach the service whole (they were 502 while no ``Host`` was sent)."""
    service = HttpService(upstreams)
    link(gateway, service.port, "http", ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> Any:
        sock = tls_h2_socket(gateway.port, sni_for("billing"), files, alpn=())
        client = H2SocketClient(sock)
        get_sid = client.request(request_head("billing.example", "/get", method="GET"))
        client.wait(client.finished(get_sid))
        post_sid = client.request(request_head("billing.example", "/post"), body=b"x" * 70000)
        client.wait(client.finished(post_sid))
        return client.responses[get_sid], client.responses[post_sid]

    got, posted = await in_thread(run)
    assert got.headers[b":status"] == b"200" and bytes(got.body) == b"GET /get 0"
    assert posted.headers[b":status"] == b"200" and bytes(posted.body) == b"POST /post 70000"
    assert [r.header("host") for r in service.requests] == ["billing.example"] * 2
    assert service.requests[1].body == b"x" * 70000
