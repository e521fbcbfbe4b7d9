"""Slowloris over HTTP/2 through a real gateway (file catalog, builtin CA, intentions;
a real ``h2`` service on 127.0.0.1 port 0; an ``h2`` client over Python's ssl with a
mesh leaf): a header block not complete within ``request_head_timeout`` ends the
connection with GOAWAY PROTOCOL_ERROR and is counted as ``request_head_timeout``,
although bytes keep moving; a slow block that is complete in time is served.

The header blocks are ``h2``'s own: a 40 KB header field makes it send HEADERS and
two CONTINUATION frames, which the client writes a piece at a time.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import pytest
import pytest_twisted
from h2.errors import ErrorCodes

from tests.h2_peers import H2SocketClient, H2TestService, Response, request_head
from tests.harness import in_thread
from tests.runtime.test_l7_http2 import h2_client, link, requests_of

HEAD_TIMEOUT = 0.4
HEADERS_FRAME = 9 + 16_384
"""Octets of the first frame of ``_big_head``: a full HEADERS frame (default size)."""


@pytest.fixture
def h2_service() -> Any:
    service = H2TestService()
    yield service
    pytest_twisted.blockon(service.port.stopListening())


def _big_head(client: H2SocketClient, path: str) -> tuple[int, bytes]:
    """A new stream, and the frames of its GET whose header block spans HEADERS and
    CONTINUATION frames (not written yet)."""
    sid = client.conn.get_next_available_stream_id()
    client.responses[sid] = Response()
    head = request_head("billing", path, "GET", x_big="b" * 40_000)
    client.conn.send_headers(sid, head, end_stream=True)
    return sid, client.conn.data_to_send()


def _trickle(client: H2SocketClient, data: bytes, pieces: int, pause: float) -> None:
    """Write ``data`` in ``pieces`` parts, ``pause`` seconds apart, reading what came
    back after each (without blocking: a TLS record that is not application data must
    not hold the next piece); stops at a GOAWAY or once the gateway closed."""
    size = -(-len(data) // pieces)
    try:
        for start in range(0, len(data), size):
            client.sock.sendall(data[start : start + size])
            time.sleep(pause)
            if not _read_what_came(client) or client.goaway is not None:
                return
    except (OSError, ssl.SSLError):
        return


def _read_what_came(client: H2SocketClient) -> bool:
    """Read every frame already here, answering nothing yet (a SETTINGS ACK written
    now would land inside the header block); False: the gateway closed."""
    client.sock.settimeout(0)
    try:
        while client.goaway is None:
            data = client.sock.recv(65536)
            if not data:
                return False
            for event in client.conn.receive_data(data):
                client._event(event)
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    finally:
        client.sock.settimeout(15)
    return True


def _until_goaway(client: H2SocketClient) -> None:
    try:
        client.wait(lambda: False)
    except (OSError, ssl.SSLError):
        return


@pytest_twisted.ensureDeferred
async def test_trickled_continuation_frames_get_goaway_at_the_head_timeout(gateway, h2_service):
    """A client writes its HEADERS frame (no END_HEADERS), then its CONTINUATION frame
    in 40 pieces 0.1 s apart (4 s in all; ``idle_timeout`` 1 h, so only the head
    deadline can stop it): GOAWAY PROTOCOL_ERROR about ``request_head_timeout`` (0.4 s)
    after the HEADERS frame, counted once; nothing reached the service and no request
    was logged."""
    gateway.site_options = {"request_head_timeout": f"{HEAD_TIMEOUT}s", "idle_timeout": "1h"}
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> tuple[Any, float]:
        client = h2_client(gateway)
        frames = _big_head(client, "/slow")[1]
        client.sock.sendall(frames[:HEADERS_FRAME])
        started = time.monotonic()
        _trickle(client, frames[HEADERS_FRAME:], 40, 0.1)
        _until_goaway(client)
        return client.goaway, time.monotonic() - started

    goaway, took = await in_thread(run)
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == 0
    assert HEAD_TIMEOUT * 0.9 <= took < 3.5
    await gateway.wait_for(
        lambda: gateway.metric("tgw_http_bad_requests_total", reason="request_head_timeout") == 1
    )
    assert not h2_service.requests and not requests_of(gateway)


@pytest_twisted.ensureDeferred
async def test_a_header_block_that_never_ends_gets_goaway_at_the_head_timeout(gateway, h2_service):
    """After one served request, a HEADERS frame without END_HEADERS and then nothing:
    GOAWAY PROTOCOL_ERROR naming the served stream as the last one, at the head
    timeout, not at the site's ``idle_timeout`` (1 h)."""
    gateway.site_options = {"request_head_timeout": f"{HEAD_TIMEOUT}s", "idle_timeout": "1h"}
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> tuple[Any, int, float]:
        client = h2_client(gateway)
        sid = client.request(request_head("billing", "/first", "GET"))
        client.wait(client.finished(sid))
        frames = _big_head(client, "/never")[1]
        client.sock.sendall(frames[:HEADERS_FRAME])  # no CONTINUATION follows
        started = time.monotonic()
        _until_goaway(client)
        return client.goaway, sid, time.monotonic() - started

    goaway, sid, took = await in_thread(run)
    assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert goaway.last_stream_id == sid
    assert HEAD_TIMEOUT * 0.9 <= took < HEAD_TIMEOUT + 1.5
    assert [s.headers[b":path"] for s in h2_service.requests] == [b"/first"]
    assert gateway.metric("tgw_http_bad_requests_total", reason="request_head_timeout") == 1


@pytest_twisted.ensureDeferred
async def test_a_slow_header_block_complete_in_time_is_served(gateway, h2_service):
    """With ``request_head_timeout`` 1 s (room for a loaded machine): the same large
    head written in 4 pieces 0.05 s apart is answered 200 by the service, and the
    connection serves the next request after a pause longer than the head timeout."""
    gateway.site_options = {"request_head_timeout": "1s", "idle_timeout": "1h"}
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> tuple[Any, Any]:
        client = h2_client(gateway)
        sid, frames = _big_head(client, "/patient")
        _trickle(client, frames, 4, 0.05)
        client.wait(client.finished(sid))
        time.sleep(1.3)
        again = client.request(request_head("billing", "/again", "GET"))
        client.wait(client.finished(again))
        return client.responses[sid], client.responses[again]

    first, second = await in_thread(run)
    assert first.headers[b":status"] == b"200" and second.headers[b":status"] == b"200"
    paths = [s.headers[b":path"] for s in h2_service.requests]
    assert paths == [b"/patient", b"/again"]
    assert gateway.metric("tgw_http_bad_requests_total", reason="request_head_timeout") == 0
