"""Real HTTP/2 peers for the L7 tests, written directly on the ``h2`` library.

- :class:`H2TestServer`: a Twisted HTTP/2 server (the service behind the gateway).
  What it answers is chosen per request by the ``x-test`` header (see ``_respond``);
  it acknowledges received DATA only while ``reading`` is set, so a test can play a
  slow reader, and it records what it saw.
- :class:`H2SocketClient`: a blocking HTTP/2 client over a TLS socket (run it in a
  thread), acknowledging received DATA only when told, so a test can play a slow
  reader on the client side too.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol


@dataclass
class SeenStream:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None
    unacked: int = 0


class H2TestServer(Protocol):
    """One HTTP/2 server connection of :class:`H2TestService`."""

    def __init__(self, service: H2TestService) -> None:
        self.service = service
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.streams: dict[int, SeenStream] = {}
        self.pending: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.service.connections.append(self)
        if self.service.max_streams is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.service.max_streams
                },
            )
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            sid = getattr(event, "stream_id", 0)
            if isinstance(event, h2.events.RequestReceived):
                seen = SeenStream(headers=dict(event.headers))
                self.streams[sid] = seen
                self.service.max_open_seen = max(
                    self.service.max_open_seen, self.conn.open_inbound_streams
                )
                self.service.requests.append(seen)
                if seen.headers.get(b"x-test") == b"goaway":
                    self.conn.close_connection(last_stream_id=0)
                    self.transport.write(self.conn.data_to_send())
                    self.transport.loseConnection()
                    return
            elif isinstance(event, h2.events.DataReceived):
                seen = self.streams[sid]
                seen.body += event.data
                if self.service.reading:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                else:
                    seen.unacked += event.flow_controlled_length
            elif isinstance(event, h2.events.TrailersReceived):
                self.streams[sid].trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self.streams[sid].ended = True
                self._respond(sid)
            elif isinstance(event, h2.events.StreamReset):
                if sid in self.streams:
                    self.streams[sid].reset = event.error_code
                self.pending.pop(sid, None)
            elif isinstance(event, h2.events.WindowUpdated):
                self._pump()
        self.transport.write(self.conn.data_to_send())

    def read_again(self) -> None:
        """Stop playing the slow reader: acknowledge everything held back."""
        for sid, seen in self.streams.items():
            if seen.unacked:
                self.conn.acknowledge_received_data(seen.unacked, sid)
                seen.unacked = 0
        self.transport.write(self.conn.data_to_send())

    def _respond(self, sid: int) -> None:
        seen = self.streams[sid]
        kind = seen.headers.get(b"x-test", b"echo")
        if kind == b"hold":  # answer nothing: the test resets or waits
            return
        size = int(seen.headers.get(b"x-size", b"0"))
        body = bytes(seen.body) if kind == b"echo" else pattern(size)
        self.conn.send_headers(
            sid,
            [
                (b":status", b"200"),
                (b"x-request-sha256", hashlib.sha256(seen.body).hexdigest().encode()),
                (b"x-authority", seen.headers.get(b":authority", b"")),
                (b"x-path", seen.headers.get(b":path", b"")),
            ],
        )
        self.pending[sid] = body
        self._pump()

    def _pump(self) -> None:
        for sid in list(self.pending):
            body = self.pending[sid]
            while body:
                window = min(self.conn.local_flow_control_window(sid), 16384)
                if window <= 0:
                    break
                self.conn.send_data(sid, body[:window])
                body = body[window:]
            self.pending[sid] = body
            if not body:
                del self.pending[sid]
                self.conn.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)
        self.transport.write(self.conn.data_to_send())


def pattern(size: int) -> bytes:
    block = bytes(range(256)) * 64
    return (block * (size // len(block) + 1))[:size]


class H2TestService(Factory):
    """Listens on 127.0.0.1:0 and speaks HTTP/2 with prior knowledge."""

    def __init__(self, max_streams: int | None = None) -> None:
        self.connections: list[H2TestServer] = []
        self.requests: list[SeenStream] = []
        self.reading = True
        self.max_streams = max_streams
        self.max_open_seen = 0
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")

    def buildProtocol(self, addr: Any) -> H2TestServer:
        return H2TestServer(self)

    @property
    def port_number(self) -> int:
        return self.port.getHost().port

    def read_again(self) -> None:
        self.reading = True
        for conn in self.connections:
            conn.read_again()


@dataclass
class Response:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    ended: bool = False
    reset: int | None = None


class H2SocketClient:
    """A blocking HTTP/2 client over TLS (one per thread; see module docstring)."""

    def __init__(self, sock: ssl.SSLSocket, validate: bool = True) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=validate,
                normalize_outbound_headers=validate,
            )
        )
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.reading = threading.Event()
        self.reading.set()
        self.unacked: dict[int, int] = {}
        self.received = 0
        self.sent = 0  # body bytes the windows let this client send so far
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        trailers: Any = None,
        keep_open: bool = False,
    ) -> int:
        """Open a stream; it ends with ``body``/``trailers`` unless ``keep_open``."""
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = Response()
        self.conn.send_headers(sid, headers, end_stream=not (body or trailers or keep_open))
        self.flush()
        if body or trailers:
            self.send_body(sid, body, trailers)
        return sid

    def send_body(self, sid: int, body: bytes, trailers: Any = None) -> None:
        """Send ``body`` as the windows allow (reading frames while blocked), then end."""
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.read_once()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            self.sent += min(window, len(view))
            view = view[window:]
            self.flush()
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        self.flush()

    def read_once(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()
        return True

    def _event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", 0)
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[sid].headers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.responses[sid].body += event.data
            self.received += len(event.data)
            if self.reading.is_set():
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            else:
                self.unacked[sid] = self.unacked.get(sid, 0) + event.flow_controlled_length
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[sid].trailers = dict(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[sid].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.responses[sid].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def read_again(self) -> None:
        self.reading.set()
        for sid, n in self.unacked.items():
            self.conn.acknowledge_received_data(n, sid)
        self.unacked.clear()
        self.flush()

    def wait(self, done: Callable[[], bool]) -> None:
        while not done() and self.goaway is None:
            if not self.read_once():
                return

    def finished(self, *sids: int) -> Callable[[], bool]:
        return lambda: all(
            self.responses[s].ended or self.responses[s].reset is not None for s in sids
        )


def tls_h2_socket(
    port: int, sni: str, files: Any, alpn: tuple[str, ...] = ("h2",)
) -> ssl.SSLSocket:
    cert, key, root = files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(root))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    return ctx.wrap_socket(raw, server_hostname=sni)


def request_head(
    authority: str = "billing.example", path: str = "/", method: str = "POST", **extra: str
) -> list[tuple[bytes, bytes]]:
    head = [
        (b":method", method.encode()),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
    return head + [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]


def serve_h2_echo(sock: socket.socket) -> None:
    """A blocking HTTP/2 server on one (already TLS-wrapped) socket, for threaded
    upstreams: each request is answered 200 with its body and a trailer."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    bodies: dict[int, bytearray] = {}
    while True:
        try:
            data = sock.recv(65536)
        except (OSError, ssl.SSLError):
            return
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                conn.send_headers(sid, [(b":status", b"200")])
                conn.send_data(sid, bytes(bodies.pop(sid)))
                conn.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
