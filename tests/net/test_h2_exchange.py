"""HTTP/2 at an L7 destination, end to end over real sockets: a real ``h2`` client over
real TLS (Python's ssl) → the gateway's HTTP/2 driver (gwcore.net.h2_downstream,
h2_exchange, h2_upstream on Twisted's TLS) → a real ``h2`` server on 127.0.0.1:0.

The driver is wired here the way the L7 core wires it (a decide callable, a pool per
destination); these tests prove the codec, relay and flow-control behaviour.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from h2.errors import ErrorCodes
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions

from gwcore.net.h2_downstream import H2Downstream
from gwcore.net.h2_exchange import H2Exchange, H2Outcome
from gwcore.net.h2_link import CONNECTION_WINDOW, STREAM_WINDOW
from gwcore.net.h2_upstream import H2Pool, H2Upstream
from gwcore.policy.model import Decision, Verdict
from gwcore.testing import MeshCA
from tests.h2_peers import H2SocketClient, H2TestService, request_head, tls_h2_socket
from tests.harness import in_thread

ALLOW = Decision(Verdict.ALLOW, "test", "allowed")
DENY = Decision(Verdict.DENY, "test", "denied by test")


class Front:
    """The gateway's HTTP/2 side for one destination, on 127.0.0.1:0 over TLS."""

    def __init__(self, tmp_path: Any, service: H2TestService, max_connections: int = 2) -> None:
        self.ca = MeshCA()
        leaf = self.ca.leaf("billing", dns_names=["billing.example"])
        client = self.ca.leaf("web")
        cert, key = self.ca.write(tmp_path, "web", client)
        self.files = (cert, key, self.ca.write_root(tmp_path / "root.pem"))
        self.service = service
        self.decision = ALLOW
        self.outcomes: list[H2Outcome] = []
        self.errors: list[str] = []
        self.downstreams: list[H2Downstream] = []
        self.pool = H2Pool(self._connect, max_connections=max_connections)
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(leaf.key),
            certificate=crypto.X509.from_cryptography(leaf.certificate),
            verify=True,
            caCerts=[crypto.X509.from_cryptography(self.ca.cert)],
            requireCertificate=True,
            acceptableProtocols=[b"h2"],
        )
        self.port = reactor.listenSSL(
            0, Factory.forProtocol(self._downstream), options, interface="127.0.0.1"
        )
        self.port_number = self.port.getHost().port

    def _downstream(self) -> H2Downstream:
        proto = H2Downstream(
            self._open, max_request_headers_kb=4, on_protocol_error=self.errors.append
        )
        self.downstreams.append(proto)
        return proto

    def _open(self, stream: Any, head: Any) -> H2Exchange:
        return H2Exchange(
            stream,
            head,
            decide=lambda facts: self.decision,
            pool=self.pool,
            on_done=self.outcomes.append,
        )

    def _connect(self) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.port_number)
        return connectProtocol(endpoint, H2Upstream())

    def client(self, validate: bool = True) -> H2SocketClient:
        return H2SocketClient(
            tls_h2_socket(self.port_number, "billing.example", self.files), validate
        )

    async def close(self) -> None:
        self.pool.close()
        await self.port.stopListening()
        await self.service.port.stopListening()


@pytest.fixture
def front(tmp_path: Any) -> Iterator[Front]:
    made = Front(tmp_path, H2TestService())
    yield made
    pytest_twisted.blockon(Deferred.fromCoroutine(made.close()))


@pytest_twisted.ensureDeferred
async def test_concurrent_streams_share_bounded_upstream_connections(front: Front) -> None:
    """Twenty requests opened at once on one client connection each get their own
    body echoed back with the service's trailers, the path and ``:authority`` arrive
    unchanged, and the upstream sees them on at most the pool's two connections."""

    def run() -> dict[int, Any]:
        client = front.client()
        sids = {}
        for i in range(20):
            sid = client.request(request_head(path=f"/item/{i}"), keep_open=True)
            sids[sid] = i
        for sid, i in sids.items():
            client.send_body(sid, f"body-{i}".encode() * 100)
        client.wait(client.finished(*sids))
        return {i: client.responses[sid] for sid, i in sids.items()}

    responses = await in_thread(run)
    for i, response in responses.items():
        assert response.headers[b":status"] == b"200"
        assert bytes(response.body) == f"body-{i}".encode() * 100
        assert response.trailers == {b"x-trailer": b"done"}
        assert response.headers[b"x-path"] == f"/item/{i}".encode()
        assert response.headers[b"x-authority"] == b"billing.example"
    assert 1 <= len(front.service.connections) <= 2
    assert len(front.outcomes) == 20 and all(o.status == 200 for o in front.outcomes)


@pytest_twisted.ensureDeferred
async def test_streams_wait_for_the_peers_max_concurrent_streams(tmp_path: Any) -> None:
    """A service allowing 2 concurrent streams on 1 pooled connection never sees a
    third open stream: the others wait in the pool and all complete in the end."""
    service = H2TestService(max_streams=2)
    front = Front(tmp_path, service, max_connections=1)
    try:

        def run() -> list[Any]:
            client = front.client()
            sids = [client.request(request_head(path=f"/{i}"), body=b"x" * 10) for i in range(6)]
            client.wait(client.finished(*sids))
            return [client.responses[s] for s in sids]

        responses = await in_thread(run)
        assert [bytes(r.body) for r in service.requests] == [b"x" * 10] * 6, [
            (r.headers, r.reset) for r in responses
        ]
        assert [r.body for r in responses] == [bytearray(b"x" * 10)] * 6
        assert len(service.connections) == 1
        assert service.connections[0].conn.highest_inbound_stream_id == 11
    finally:
        await front.close()


@pytest_twisted.ensureDeferred
async def test_large_upload_to_a_slow_service_is_held_by_windows_not_buffers(front: Front) -> None:
    """4 MiB sent to a service that stops reading: the client is blocked by HTTP/2
    windows (it gets to send only about the gateway's window plus the service's),
    the gateway holds no more than its own window, and once the service reads again
    every byte arrives in order."""
    front.service.reading = False
    body = bytes(range(256)) * (4 * 4096)
    client_box: list[H2SocketClient] = []

    def upload() -> Any:
        client = front.client()
        client_box.append(client)
        sid = client.request(request_head(path="/upload"), keep_open=True)
        client.send_body(sid, body)
        client.wait(client.finished(sid))
        return client.responses[sid]

    done = in_thread(upload)
    await _until(lambda: front.service.requests and len(front.service.requests[0].body) >= 65535)
    await _sleep(0.3)  # long enough for an unbounded relay to buffer megabytes
    received = len(front.service.requests[0].body)
    assert received == 65535  # the service's default window, never more
    held = sum(s.queued for d in front.downstreams for s in d.streams.values())
    held += sum(s.queued for c in front.pool.connections for s in c.streams.values())
    assert held <= STREAM_WINDOW
    front.service.read_again()
    response = await done
    assert response.headers[b"x-request-sha256"] == hashlib.sha256(body).hexdigest().encode()
    assert bytes(response.body) == body


@pytest_twisted.ensureDeferred
async def test_large_download_to_a_slow_client_stalls_the_service(front: Front) -> None:
    """A client that stops acknowledging a 4 MiB response stalls the service through
    the windows: the gateway holds at most one stream window of it, and the whole
    response arrives in order once the client reads again."""
    size = 4 * 1024 * 1024
    box: list[H2SocketClient] = []

    def download() -> Any:
        client = front.client()
        box.append(client)
        client.reading.clear()
        sid = client.request(request_head(path="/big", x_test="big", x_size=str(size)))
        client.wait(lambda: client.received >= 65535)
        return sid

    sid = await in_thread(download)
    await _sleep(0.3)
    held = sum(s.queued for d in front.downstreams for s in d.streams.values())
    assert held <= STREAM_WINDOW
    assert sum(len(b) for b in front.service.connections[0].pending.values()) >= size - 2 * (
        STREAM_WINDOW + CONNECTION_WINDOW
    )
    client = box[0]

    def finish() -> Any:
        client.read_again()
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(finish)
    assert len(response.body) == size
    assert response.trailers == {b"x-trailer": b"done"}


@pytest_twisted.ensureDeferred
async def test_client_reset_cancels_the_upstream_stream(front: Front) -> None:
    """RST_STREAM from the client while the service holds the request resets the
    upstream stream (CANCEL); the connection goes on serving other streams."""

    def run() -> Any:
        client = front.client()
        sid = client.request(request_head(path="/hold", x_test="hold"), body=b"x")
        return client, sid

    client, sid = await in_thread(run)
    await _until(lambda: front.service.requests and front.service.requests[0].ended)

    def reset_then_again() -> Any:
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        again = client.request(request_head(path="/after"), body=b"ok")
        client.wait(client.finished(again))
        return client.responses[again]

    response = await in_thread(reset_then_again)
    assert bytes(response.body) == b"ok"
    await _until(lambda: front.service.requests[0].reset is not None)
    assert front.service.requests[0].reset == ErrorCodes.CANCEL


@pytest_twisted.ensureDeferred
async def test_upstream_goaway_resets_its_streams_and_new_requests_use_a_new_connection(
    front: Front,
) -> None:
    """A service that sends GOAWAY (last stream 0) refuses the stream in flight: the
    client gets RST_STREAM REFUSED_STREAM, not a hang; the next request opens a new
    upstream connection and succeeds."""

    def run() -> Any:
        client = front.client()
        first = client.request(request_head(path="/a", x_test="goaway"), body=b"1")
        client.wait(client.finished(first))
        second = client.request(request_head(path="/b"), body=b"2")
        client.wait(client.finished(second))
        return client.responses[first], client.responses[second]

    first, second = await in_thread(run)
    assert first.reset == ErrorCodes.REFUSED_STREAM
    assert bytes(second.body) == b"2"
    assert len(front.service.connections) == 2


@pytest_twisted.ensureDeferred
async def test_denied_request_gets_403_and_the_connection_stays_usable(front: Front) -> None:
    """A denied request is answered 403 ``RBAC: access denied`` without reaching the
    service; the next, allowed, request on the same connection goes through."""

    def run() -> Any:
        client = front.client()
        front.decision = DENY
        denied = client.request(request_head(path="/secret"), body=b"payload" * 1000)
        client.wait(client.finished(denied))
        front.decision = ALLOW
        allowed = client.request(request_head(path="/open"), body=b"hi")
        client.wait(client.finished(allowed))
        return client.responses[denied], client.responses[allowed]

    denied, allowed = await in_thread(run)
    assert denied.headers[b":status"] == b"403"
    assert bytes(denied.body) == b"RBAC: access denied"
    assert bytes(allowed.body) == b"hi"
    assert [r.headers[b":path"] for r in front.service.requests] == [b"/open"]


@pytest_twisted.ensureDeferred
async def test_denied_grpc_request_gets_a_trailers_only_permission_denied(front: Front) -> None:
    """A denied gRPC call gets one HEADERS frame: ``:status 200``, ``content-type:
    application/grpc``, ``grpc-status 7``, ``grpc-message RBAC: access denied``."""
    front.decision = DENY

    def run() -> Any:
        client = front.client()
        sid = client.request(
            request_head(path="/pkg.Svc/Call", content_type="application/grpc", te="trailers"),
            body=b"\x00\x00\x00\x00\x00",
        )
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(run)
    assert response.headers == {
        b":status": b"200",
        b"content-type": b"application/grpc",
        b"grpc-status": b"7",
        b"grpc-message": b"RBAC: access denied",
    }
    assert response.body == b"" and response.ended and not front.service.requests


@pytest_twisted.ensureDeferred
async def test_a_request_without_path_is_reset_and_never_reaches_the_service(front: Front) -> None:
    """A request head missing ``:path`` (sent by a client that skips validation) is
    reset with PROTOCOL_ERROR, counted in the outcome, and the service sees nothing."""

    def run() -> Any:
        client = front.client(validate=False)
        head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")]
        sid = client.request(head)
        client.wait(client.finished(sid))
        return client.responses[sid], client.goaway

    response, goaway = await in_thread(run)
    assert response.reset == ErrorCodes.PROTOCOL_ERROR or goaway is not None
    assert not front.service.requests


@pytest_twisted.ensureDeferred
async def test_oversized_header_list_ends_the_connection_with_goaway(front: Front) -> None:
    """A header list over ``max_request_headers_kb`` (4 KiB here) is a connection
    error: GOAWAY, the reason counted once, the service sees nothing."""

    def run() -> Any:
        client = front.client()
        client.request(request_head(path="/", x_big="v" * 8000))
        client.wait(lambda: False)
        return client.goaway

    goaway = await in_thread(run)
    assert goaway is not None and goaway.error_code != ErrorCodes.NO_ERROR
    assert front.errors == ["header_list_too_large"]
    assert not front.service.requests


async def _sleep(seconds: float) -> None:
    from tests.harness import sleep

    await sleep(seconds)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await _sleep(0.02)
    raise AssertionError("condition not reached in time")
