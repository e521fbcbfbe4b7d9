"""L7 over HTTP/1.1: a request that meets a stale kept-alive upstream connection.

The gateway runs in-process (file catalog, builtin CA, intentions) with a real mesh
mTLS client; the service is a real HTTP/1.1 server (h11, threads, 127.0.0.1 port 0)
that keeps a connection alive after its first response and closes it, without an
answer, when the next request arrives on it: what a server whose keep-alive timer
fires at the moment the gateway reuses the connection does.
"""

from __future__ import annotations

import socket
import threading

import h11
import pytest_twisted

from tests.harness import in_thread
from tests.runtime.l7_support import SeenRequest, get, link, mesh_http


class ClosesReusedConnections:
    """Answers the first request of each connection (keep-alive) and drops the
    connection when a second request arrives on it, after reading that request."""

    def __init__(self, upstreams) -> None:
        self.lock = threading.Lock()
        self.answered: list[SeenRequest] = []  # requests that got a response
        self.dropped: list[SeenRequest] = []  # requests the service closed on
        self.upstream = upstreams(self._serve)

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def connections(self) -> int:
        return self.upstream.accepted

    def _serve(self, sock: socket.socket, up) -> None:
        conn = h11.Connection(h11.SERVER)
        served = 0
        current: SeenRequest | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
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
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                if served == 1:
                    with self.lock:
                        self.dropped.append(current)
                    sock.close()  # the keep-alive timer fired: no answer
                    return
                with self.lock:
                    self.answered.append(current)
                body = f"{current.method} {current.target} {current.body.decode()}".encode()
                headers = [("content-length", str(len(body)))]
                sock.sendall(conn.send(h11.Response(status_code=200, headers=headers)))
                sock.sendall(conn.send(h11.Data(data=body)))
                sock.sendall(conn.send(h11.EndOfMessage()))
                served += 1
                current = None
                conn.start_next_cycle()
            else:
                sock.close()
                return


def _two(gateway, second: dict) -> list[tuple[int, bytes]]:
    conn = mesh_http(gateway, "billing", "web")
    try:
        first = get(conn, "/first")[:2]
        return [first, get(conn, "/second", **second)[:2]]
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_get_on_a_stale_kept_alive_connection_is_retried_on_a_fresh_one(gateway, upstreams):
    """A GET that lands on a pooled connection the service closes without answering
    is sent once more on a fresh connection and answered 200 (before: 502)."""
    service = ClosesReusedConnections(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answers = await in_thread(_two, gateway, {})
    assert answers == [(200, b"GET /first "), (200, b"GET /second ")]
    assert service.connections == 2
    assert [r.target for r in service.dropped] == ["/second"]
    assert [r.target for r in service.answered] == ["/first", "/second"]


@pytest_twisted.ensureDeferred
async def test_put_with_a_body_is_retried_with_the_same_body(gateway, upstreams):
    """PUT is idempotent (RFC 9110 §9.2.2): on a stale connection after its body went
    out, it is retried on a fresh connection with the same body, byte for byte."""
    service = ClosesReusedConnections(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answers = await in_thread(_two, gateway, {"method": "PUT", "body": b"state=42"})
    assert answers == [(200, b"GET /first "), (200, b"PUT /second state=42")]
    assert [r.body for r in service.dropped] == [b"state=42"]
    assert service.answered[-1].body == b"state=42" and service.connections == 2


@pytest_twisted.ensureDeferred
async def test_post_whose_body_was_sent_is_never_retried(gateway, upstreams):
    """POST is not idempotent: once its body was sent on the stale connection, the
    gateway answers 502 and the service sees the POST exactly once."""
    service = ClosesReusedConnections(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answers = await in_thread(_two, gateway, {"method": "POST", "body": b"charge=1"})
    assert answers[0] == (200, b"GET /first ")
    assert answers[1][0] == 502
    assert [r.target for r in service.dropped] == ["/second"]
    assert [r.method for r in service.answered] == ["GET"]
    assert service.connections == 1


@pytest_twisted.ensureDeferred
async def test_post_without_a_body_is_retried(gateway, upstreams):
    """A POST with no body byte sent (Content-Length: 0) may go again: nothing of its
    body can have been applied (the rule Envoy and HAProxy follow for reused
    connections)."""
    service = ClosesReusedConnections(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answers = await in_thread(_two, gateway, {"method": "POST", "body": b""})
    assert answers == [(200, b"GET /first "), (200, b"POST /second ")]
    assert service.connections == 2
