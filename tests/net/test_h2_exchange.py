"""HTTP/2 at an L7 destination over real sockets: a real ``h2`` client over real TLS
(Python's ssl) → the HTTP/2 downstream codec (gwcore.net.h2_downstream) → an exchange
→ the HTTP/2 upstream pool (gwcore.net.h2_upstream) → a real ``h2`` server on
127.0.0.1:0.

The exchange here is a small stand-in keeping the core's contract
(gwcore.net.l7_core: decide, answer 403 or open an upstream stream, relay with the
producers); these tests prove the codec, the pool and flow control.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from h2.errors import ErrorCodes
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.h2_downstream import Http2Server
from gwcore.net.h2_link import CONNECTION_WINDOW, STREAM_WINDOW
from gwcore.net.h2_upstream import Http2Pool
from gwcore.net.l7_core import L7Limits, UpstreamFailure
from gwcore.policy.model import Endpoint
from gwcore.testing import MeshCA
from tests.h2_peers import H2SocketClient, H2TestService, request_head, tls_h2_socket
from tests.harness import in_thread


class StandInExchange:
    """The core's exchange reduced to its contract (module docstring)."""

    def __init__(self, front: Front, request: Any, writer: Any) -> None:
        self.front, self.request, self.writer = front, request, writer
        self._producer: Any = None
        self.stream: Any = None
        self.status: int | None = None
        self.error: str | None = None
        if not front.allow:
            body = b"RBAC: access denied"
            self._answer(403, body, "denied")
            return
        self.stream = front.pool.open(request, self)

    def _answer(self, status: int, body: bytes, error: str) -> None:
        self.status, self.error = status, error
        self.front.outcomes.append(self)
        head = Headers([("content-type", "text/plain"), ("content-length", str(len(body)))])
        self.writer.write_head(HttpResponse(status, head))
        self.writer.write_data(body)
        self.writer.write_end(None)

    # Exchange
    @property
    def request_producer(self) -> Any:
        return self._producer

    @request_producer.setter
    def request_producer(self, producer: Any) -> None:
        self._producer = producer
        if self.stream is not None:
            self.stream.set_request_producer(producer)

    def request_data(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.send_data(data)

    def request_end(self, trailers: Any = None) -> None:
        if self.stream is not None:
            self.stream.send_end(trailers)

    def client_gone(self, reason: str) -> None:
        self.error = "client_gone"
        if self.stream is not None:
            self.stream.cancel(reason)

    # ResponseSink
    def response_head(self, response: HttpResponse) -> None:
        self.status = response.status
        self.writer.write_head(response)
        self.writer.set_response_producer(self.stream)

    def response_data(self, data: bytes) -> None:
        self.writer.write_data(data)

    def response_end(self, trailers: Any = None) -> None:
        self.front.outcomes.append(self)
        self.writer.set_response_producer(None)
        self.writer.write_end(trailers)

    def response_failed(self, failure: UpstreamFailure) -> None:
        self.front.failures.append(failure)
        if self.status is not None:
            self.writer.abort(failure.detail)
        else:
            self._answer(failure.status, failure.detail.encode(), failure.reason)


class CodecHost(Protocol):
    """A ClientLink on Twisted's TLS: what the L7 session is to the codec."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.codec: Http2Server | None = None

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.codec = Http2Server(self, self.front, L7Limits(max_request_headers_kb=4))
        self.front.codecs.append(self.codec)

    def dataReceived(self, data: bytes) -> None:
        assert self.codec is not None
        self.codec.data_received(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.codec is not None:
            self.codec.connection_lost()

    # producer of client-bound bytes (Twisted's TLS pauses us)
    def pauseProducing(self) -> None:
        if self.codec is not None:
            self.codec.set_client_writable(False)

    def resumeProducing(self) -> None:
        if self.codec is not None:
            self.codec.set_client_writable(True)

    def stopProducing(self) -> None:
        return None

    # ClientLink
    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        self.transport.resumeProducing()

    def close(self, cause: str) -> None:
        self.front.closes.append(cause)
        self.transport.loseConnection()

    def bad_request(self, reason: str, detail: str) -> None:
        self.front.errors.append(reason)


class Front:
    """The gateway's HTTP/2 side for one destination, on 127.0.0.1:0 over TLS."""

    def __init__(self, tmp_path: Any, service: H2TestService, limits: Any = None) -> None:
        self.ca = MeshCA()
        leaf = self.ca.leaf("billing", dns_names=["billing.example"])
        cert, key = self.ca.write(tmp_path, "web", self.ca.leaf("web"))
        self.files = (cert, key, self.ca.write_root(tmp_path / "root.pem"))
        self.service = service
        self.allow = True
        self.outcomes: list[StandInExchange] = []
        self.failures: list[UpstreamFailure] = []
        self.errors: list[str] = []
        self.closes: list[str] = []
        self.codecs: list[Http2Server] = []
        self.dials = 0
        self.pool = Http2Pool(reactor, self._dial, limits)
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(leaf.key),
            certificate=crypto.X509.from_cryptography(leaf.certificate),
            verify=True,
            caCerts=[crypto.X509.from_cryptography(self.ca.cert)],
            requireCertificate=True,
            acceptableProtocols=[b"h2"],
        )
        factory = Factory.forProtocol(lambda: CodecHost(self))
        self.port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.port_number = self.port.getHost().port

    def start(self, request: Any, writer: Any) -> StandInExchange:  # ExchangeStarter
        return StandInExchange(self, request, writer)

    def _dial(self, owner: Any, factory: Any) -> Deferred[Any]:
        self.dials += 1
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.port_number)
        chosen = Endpoint("127.0.0.1", self.service.port_number)
        return endpoint.connect(factory).addCallback(lambda proto: (proto, chosen, 1, 0.0))

    def client(self, validate: bool = True) -> H2SocketClient:
        sock = tls_h2_socket(self.port_number, "billing.example", self.files)
        return H2SocketClient(sock, validate)

    def held(self) -> int:
        """Bytes the gateway holds in its HTTP/2 send queues, both sides."""
        down = sum(s.queued for c in self.codecs for s in c.streams.values())
        return down + sum(s.queued for c in self.pool.connections for s in c.streams.values())

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
    unchanged, and the upstream sees them all on one multiplexed connection."""

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
    assert len(front.service.connections) == 1
    assert len(front.outcomes) == 20 and all(o.status == 200 for o in front.outcomes)


@pytest_twisted.ensureDeferred
async def test_streams_wait_for_the_peers_max_concurrent_streams(tmp_path: Any) -> None:
    """A service allowing 2 concurrent streams never sees a third open stream on a
    connection: the others wait in the pool (or go to a second connection, at most
    the pool's bound) and all complete in the end."""
    service = H2TestService(max_streams=2)
    front = Front(tmp_path, service)
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
        assert 1 <= len(service.connections) <= front.pool.max_connections
        assert service.max_open_seen == 2
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
    assert front.held() <= STREAM_WINDOW
    assert client_box[0].sent <= 65535 + STREAM_WINDOW  # not the 4 MiB
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
    assert front.held() <= STREAM_WINDOW
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
    exchange hears a ``reset`` failure with status 503 (not a hang), and the next
    request opens a new upstream connection and succeeds."""

    def run() -> Any:
        client = front.client()
        first = client.request(request_head(path="/a", x_test="goaway"), body=b"1")
        client.wait(client.finished(first))
        second = client.request(request_head(path="/b"), body=b"2")
        client.wait(client.finished(second))
        return client.responses[first], client.responses[second]

    first, second = await in_thread(run)
    assert first.headers[b":status"] == b"503"
    assert [f.reason for f in front.failures] == ["reset"]
    assert bytes(second.body) == b"2"
    assert len(front.service.connections) == 2


@pytest_twisted.ensureDeferred
async def test_denied_request_gets_403_and_the_connection_stays_usable(front: Front) -> None:
    """A denied request is answered 403 ``RBAC: access denied`` without reaching the
    service; the next, allowed, request on the same connection goes through."""

    def run() -> Any:
        client = front.client()
        front.allow = False
        denied = client.request(request_head(path="/secret"), body=b"payload" * 1000)
        client.wait(client.finished(denied))
        front.allow = True
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
    front.allow = False

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
async def test_a_head_without_path_is_a_connection_error(front: Front) -> None:
    """A request head missing ``:path`` (sent by a client that skips validation) is
    malformed HTTP/2: GOAWAY PROTOCOL_ERROR, counted once, the service sees nothing."""

    def run() -> Any:
        client = front.client(validate=False)
        head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x")]
        sid = client.request(head)
        client.wait(client.finished(sid))
        return client.goaway

    goaway = await in_thread(run)
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert front.errors == ["protocol_error"]
    assert not front.service.requests


@pytest_twisted.ensureDeferred
async def test_a_connect_request_is_reset_and_the_connection_goes_on(front: Front) -> None:
    """CONNECT (a tunnel, not a request an L7 destination serves) gets RST_STREAM
    PROTOCOL_ERROR, counted as ``connect_refused``; the next request on the same
    connection is served."""

    def run() -> Any:
        client = front.client(validate=False)
        sid = client.request([(b":method", b"CONNECT"), (b":authority", b"x:443")], keep_open=True)
        client.wait(client.finished(sid))
        again = client.request(request_head(path="/after"), body=b"ok")
        client.wait(client.finished(again))
        return client.responses[sid], client.responses[again]

    refused, again = await in_thread(run)
    assert refused.reset == ErrorCodes.PROTOCOL_ERROR
    assert bytes(again.body) == b"ok"
    assert front.errors == ["connect_refused"]
    assert [r.headers[b":path"] for r in front.service.requests] == [b"/after"]


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


class _MemoryLink:
    """A ClientLink in memory: what the codec writes, and why it closed."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed: str | None = None
        self.bad: list[str] = []

    def write(self, data: bytes) -> None:
        self.out += data

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self, cause: str) -> None:
        self.closed = cause

    def bad_request(self, reason: str, detail: str) -> None:
        self.bad.append(reason)


class _AnswersWith:
    """An ExchangeStarter whose exchanges answer at once with ``response``."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response

    def start(self, request: Any, writer: Any) -> Any:
        writer.write_head(self.response)
        writer.write_end(None)
        return SimpleNamespace(request_producer=None)  # answered: nothing more is asked


def test_a_response_head_http2_cannot_carry_resets_the_stream_not_the_reactor() -> None:
    """A response field HTTP/2 cannot carry (a value with a newline) resets that stream
    with INTERNAL_ERROR; nothing raises out of the codec and the connection stays open."""
    import h2.config
    import h2.connection
    import h2.events

    link = _MemoryLink()
    bad = HttpResponse(200, Headers([("x-bad", "a\nb")]))
    codec = Http2Server(link, _AnswersWith(bad), L7Limits())
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(1, request_head(path="/", method="GET"), end_stream=True)
    codec.data_received(client.data_to_send())
    events = client.receive_data(bytes(link.out))
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(1, ErrorCodes.INTERNAL_ERROR)]
    assert link.closed is None


class _Holds:
    """An ExchangeStarter whose exchanges wait: the test answers through ``writers``."""

    def __init__(self) -> None:
        self.writers: list[Any] = []

    def start(self, request: Any, writer: Any) -> Any:
        self.writers.append(writer)
        return SimpleNamespace(
            request_producer=None,
            request_data=lambda data: None,
            request_end=lambda trailers=None: None,
            client_gone=lambda reason: None,
        )


def _frames(data: bytes) -> list[Any]:
    """The HTTP/2 frames in ``data`` (hyperframe; no connection state to trip over)."""
    from hyperframe.frame import Frame

    out, view = [], memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def test_drain_sends_goaway_finishes_open_streams_and_refuses_newer_ones() -> None:
    """``drain`` (the site stops): GOAWAY NO_ERROR naming the newest stream; that stream
    is still answered, a newer one the client sent before reading the GOAWAY is
    refused (REFUSED_STREAM, never an exchange), and the connection closes once
    nothing is in flight."""
    import h2.config
    import h2.connection
    from hyperframe.frame import DataFrame, GoAwayFrame, RstStreamFrame

    link = _MemoryLink()
    starter = _Holds()
    codec = Http2Server(link, starter, L7Limits())
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(1, request_head(path="/first", method="GET"), end_stream=True)
    codec.data_received(client.data_to_send())
    codec.drain()
    client.send_headers(3, request_head(path="/late", method="GET"), end_stream=True)
    codec.data_received(client.data_to_send())
    assert len(starter.writers) == 1 and link.closed is None

    writer = starter.writers[0]
    writer.write_head(HttpResponse(200, Headers([("content-length", "2")])))
    writer.write_data(b"ok")
    writer.write_end(None)
    frames = _frames(bytes(link.out))
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(f.error_code, f.last_stream_id) for f in goaway] == [(ErrorCodes.NO_ERROR, 1)]
    resets = [(f.stream_id, f.error_code) for f in frames if isinstance(f, RstStreamFrame)]
    assert resets == [(3, ErrorCodes.REFUSED_STREAM)]
    body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 1)
    assert body == b"ok"
    assert link.closed == "shutdown"


@pytest_twisted.ensureDeferred
async def test_retain_closes_idle_connections_to_endpoints_that_left(front: Front) -> None:
    """When the destination's endpoints change, an idle HTTP/2 connection to an
    endpoint that left closes; one to a kept endpoint stays."""

    def run() -> Any:
        client = front.client()
        sid = client.request(request_head(path="/"), body=b"x")
        client.wait(client.finished(sid))
        return client.responses[sid]

    assert bytes((await in_thread(run)).body) == b"x"
    (connection,) = front.pool.connections
    front.pool.retain({connection.endpoint})
    assert front.pool.connections == [connection]
    front.pool.retain(set())
    assert front.pool.connections == [] and connection.closed
    await _until(lambda: front.service.connections[0].transport.disconnected)


@pytest_twisted.ensureDeferred
async def test_an_idle_upstream_connection_closes_after_idle_timeout(tmp_path: Any) -> None:
    """An HTTP/2 connection to the service with no stream for the pool's
    ``idle_timeout`` closes; the next request opens a new one."""
    limits = SimpleNamespace(idle_timeout=0.2, max_connections=4, max_pending=16)
    front = Front(tmp_path, H2TestService(), limits)
    try:

        def call(path: str) -> Any:
            client = front.client()
            sid = client.request(request_head(path=path), body=b"x")
            client.wait(client.finished(sid))
            return client.responses[sid]

        assert bytes((await in_thread(call, "/one")).body) == b"x"
        (first,) = front.pool.connections
        await _until(lambda: first.closed and not front.pool.connections)
        assert bytes((await in_thread(call, "/two")).body) == b"x"
        assert len(front.service.connections) == 2
    finally:
        await front.close()
