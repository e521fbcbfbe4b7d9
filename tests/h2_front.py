"""The gateway's HTTP/2 side for the net-layer tests, on real sockets and real TLS.

:class:`Front` listens on 127.0.0.1:0 with Twisted's TLS and runs the HTTP/2
downstream codec (gwcore.net.h2_downstream) over a ClientLink, with a small stand-in
exchange keeping the core's contract (gwcore.net.l7_core: decide, answer 403 or open
an upstream stream, relay with the producers) and the HTTP/2 upstream pool
(gwcore.net.h2_upstream) dialling a real ``h2`` server. Clients are real ``h2``
clients over Python's ssl (tests.h2_peers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.h2_downstream import Http2Server
from gwcore.net.h2_upstream import Http2Pool
from gwcore.net.l7_core import L7Limits, UpstreamFailure
from gwcore.policy.model import Endpoint
from gwcore.testing import MeshCA
from tests.h2_peers import H2SocketClient, H2TestService, tls_h2_socket
from tests.harness import sleep


@implementer(IOpenSSLContextFactory)
class _ServerContext:
    """A TLS server context for the stand-in front: the leaf, client certificates verified
    against the mesh root, ALPN h2 only. Built with pyOpenSSL from cryptography objects
    (Twisted's CertificateOptions wants pyOpenSSL's deprecated X509/PKey)."""

    def __init__(self, leaf: Any, root: Any) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(leaf.certificate)
        ctx.use_privatekey(leaf.key)
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(root))
        ctx.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda conn, cert, err, depth, ok: ok
        )
        ctx.set_alpn_select_callback(
            lambda conn, offered: b"h2" if b"h2" in offered else SSL.NO_OVERLAPPING_PROTOCOLS
        )
        self._ctx = ctx

    def getContext(self) -> SSL.Context:
        return self._ctx


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
        options = _ServerContext(leaf, self.ca.cert)
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


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait (on the reactor) until ``predicate()`` holds, at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await sleep(0.02)
    raise AssertionError("condition not reached in time")
