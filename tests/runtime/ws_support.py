"""Test support for WebSocket at L7: a real WebSocket service and client (wsproto, threads).

The service (on 127.0.0.1, port 0) accepts a WebSocket upgrade with wsproto and echoes
every message, or refuses the upgrade, or says one thing and hangs up; a connection
whose first request is not an upgrade is served as plain HTTP/1.1 (h11: ``200 plain``
per request, keep-alive). It counts the bytes it received and sent after the
handshake, so a test can compare them with the gateway's access-log record.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.harness import Upstream, sni_for, tls_connect


class WsService:
    """``mode``: ``echo`` (every message back), ``hangup`` (send ``bye``, close the
    socket), ``reject`` (answer the upgrade ``400 not allowed`` and close)."""

    def __init__(self, upstreams: Callable[..., Upstream], mode: str = "echo") -> None:
        self.mode = mode
        self.heads: list[bytes] = []  # the raw head of every upgrade request
        self.plain: list[str] = []  # targets of plain requests
        self.received = 0  # bytes after the handshake's request head
        self.sent = 0  # bytes after the handshake's response head
        self.ended = threading.Event()  # a WebSocket connection's handler ended
        self.upstream = upstreams(self._serve)

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def connections(self) -> int:
        return self.upstream.accepted

    def _serve(self, sock: socket.socket, up: Upstream) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if b"\r\nupgrade: websocket" not in head.lower():
            self._plain(sock, data)
            return
        self.heads.append(head)
        try:
            self._websocket(sock, head + b"\r\n\r\n", rest)
        finally:
            self.ended.set()

    def _plain(self, sock: socket.socket, data: bytes) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            if isinstance(event, h11.Request):
                self.plain.append(event.target.decode())
            elif isinstance(event, h11.EndOfMessage):
                head = h11.Response(status_code=200, headers=[("content-length", "5")])
                sock.sendall(conn.send(head) + conn.send(h11.Data(data=b"plain")))
                sock.sendall(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                sock.close()
                return

    def _websocket(self, sock: socket.socket, head: bytes, rest: bytes) -> None:
        if self.mode == "reject":
            body = b"not allowed"
            sock.sendall(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nconnection: close\r\n\r\n"
                + body
            )
            sock.close()
            return
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        (request,) = list(ws.events())
        assert isinstance(request, Request)
        sock.sendall(ws.send(AcceptConnection()))
        if self.mode == "hangup":
            self._send(sock, ws, TextMessage(data="bye"))
            sock.close()
            return
        self.received += len(rest)
        ws.receive_data(rest)
        message: list[Any] = []
        while True:
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    message.append(event.data)
                    if event.message_finished:
                        reply: Event = (
                            TextMessage(data="".join(message))
                            if isinstance(event, TextMessage)
                            else BytesMessage(data=b"".join(message))
                        )
                        self._send(sock, ws, reply)
                        message = []
                elif isinstance(event, CloseConnection):
                    self._send(sock, ws, event.response())
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sock.close()
                return
            self.received += len(data)
            ws.receive_data(data)

    def _send(self, sock: socket.socket, ws: WSConnection, event: Event) -> None:
        data = ws.send(event)
        self.sent += len(data)
        sock.sendall(data)


class WsClient:
    """A WebSocket client over the mesh mTLS connection of ``source`` to ``billing``."""

    def __init__(self, gateway: Any, source: str = "web") -> None:
        cert, key, root = gateway.client_files(source)
        self.sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sent = 0  # bytes after the handshake's request head
        self.events: list[Event] = []

    def handshake(self, target: str) -> tuple[Event, bytes]:
        """The service's answer: ``AcceptConnection``, or ``RejectConnection`` and its body."""
        self.sock.sendall(self.ws.send(Request(host="billing", target=target)))
        body = b""
        answer: Event | None = None
        while True:
            events = self._events()
            for i, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    # Messages that came in the same read as the 101 are the session's.
                    self.events.extend(events[i + 1 :])
                    return event, b""
                if isinstance(event, RejectConnection):
                    answer = event
                    if not event.has_body:
                        return event, b""
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        assert answer is not None
                        return answer, body

    def send(self, event: Event) -> None:
        data = self.ws.send(event)
        self.sent += len(data)
        self.sock.sendall(data)

    def message(self) -> str | bytes | None:
        """The next whole message (None: the connection ended or was closed)."""
        parts: list[Any] = []
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        joiner: Any = "" if isinstance(event, TextMessage) else b""
                        return joiner.join(parts)
                elif isinstance(event, CloseConnection):
                    return None
            new = self._events()
            if not new:
                return None
            self.events.extend(new)

    def _events(self) -> list[Event]:
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLZeroReturnError, ConnectionResetError):
            data = b""
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def read_to_end(self) -> bytes:
        """Raw bytes until the gateway closes (after the handshake failed)."""
        return read_to_end(self.sock)

    def close(self) -> None:
        self.sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    """Raw bytes from ``sock`` until the gateway closes (a reset counts as the end)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ConnectionResetError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
