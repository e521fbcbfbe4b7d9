"""Test support for L7 mode: a real HTTP/1.1 service (h11, threads) and a mesh HTTP client.

The service answers each request with ``responder(request_head, body) -> (status,
headers, body)`` and records what it saw: connections accepted, every request head
and body, and every raw byte it received (to prove what did *not* reach it).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.harness import (
    Upstream,
    gateway_entry,
    intentions,
    registration,
    tls_connect,
    write_json,
)


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None


Responder = Callable[[SeenRequest], tuple[int, list[tuple[str, str]], bytes]]


def ok(request: SeenRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    body = f"{request.method} {request.target} {len(request.body)}".encode()
    return 200, [("content-type", "text/plain"), ("content-length", str(len(body)))], body


class HttpService:
    """An HTTP/1.1 service on 127.0.0.1 (port 0) built on :class:`Upstream`."""

    def __init__(
        self,
        upstreams: Callable[..., Upstream],
        responder: Responder = ok,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.responder = responder
        self.tls = tls
        self.alpn: list[str | None] = []
        self.requests: list[SeenRequest] = []
        self.raw = bytearray()
        self.sent = 0  # body bytes of streamed responses written so far
        self.read_gate = threading.Event()  # cleared: the service stops reading bodies
        self.read_gate.set()
        self.cut_ok = False  # the gateway may cut the connection (a timeout): not an error
        self.upstream = upstreams(self._serve)

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def connections(self) -> int:
        return self.upstream.accepted

    def _serve(self, sock: socket.socket, up: Upstream) -> None:
        try:
            self._exchanges(sock)
        except OSError:
            if not self.cut_ok:
                raise

    def _exchanges(self, sock: socket.socket) -> None:
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
            self.alpn.append(sock.selected_alpn_protocol())
        # Head, body and end go out as separate writes: without TCP_NODELAY each kept-alive
        # exchange would wait out delayed ACKs (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = h11.Connection(h11.SERVER)
        current: SeenRequest | None = None
        received = bytearray()  # appended per event: ``bytes +=`` is quadratic when large
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if current is not None:
                    self.read_gate.wait(30)
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                self.raw.extend(data)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                current = SeenRequest(
                    event.method.decode(),
                    event.target.decode(),
                    [(k.decode(), v.decode()) for k, v in event.headers],
                    b"",
                )
            elif isinstance(event, h11.Data):
                assert current is not None
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.body, received = bytes(received), bytearray()
                current.trailers = [(k.decode(), v.decode()) for k, v in event.headers]
                self.requests.append(current)
                status, headers, body = self.responder(current)
                current = None
                sock.sendall(conn.send(h11.Response(status_code=status, headers=headers)))
                chunks = body if isinstance(body, list) else [body] if body else []
                for chunk in chunks:
                    sock.sendall(conn.send(h11.Data(data=chunk)))
                    self.sent += len(chunk)
                sock.sendall(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    sock.close()
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                sock.close()
                return


def service_defaults(service: str, protocol: str = "http") -> dict[str, Any]:
    return {"Kind": "service-defaults", "Name": service, "Protocol": protocol}


def link(gateway, port: int, *sources: tuple[str, str], protocol: str = "http") -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing", protocol))
    write_json(gateway.catalog / "ixn.json", intentions("billing", *sources))


def mesh_http(gateway: Any, service: str, source: str) -> http.client.HTTPConnection:
    """An HTTP/1.1 client over the mesh mTLS connection of ``source`` to ``service``."""
    from tests.harness import sni_for

    cert, key, root = gateway.client_files(source)
    sock = tls_connect(gateway.port, sni_for(service), cert, key, root)
    conn = http.client.HTTPConnection(service, timeout=10)
    conn.sock = sock
    return conn


def get(conn: http.client.HTTPConnection, path: str, **kw: Any) -> tuple[int, bytes, Any]:
    conn.request(kw.pop("method", "GET"), path, **kw)
    response = conn.getresponse()
    return response.status, response.read(), response
