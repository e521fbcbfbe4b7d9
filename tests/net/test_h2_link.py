"""HTTP/2 flow control and resets end to end (gwcore.net.h2_link), on real sockets:
a real h2 client over TLS → the HTTP/2 codec → the upstream pool → a real h2 server
(tests.h2_front). A slow reader must stall its writer through windows, not buffers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest_twisted
from h2.errors import ErrorCodes

from gwcore.net.h2_link import CONNECTION_WINDOW, STREAM_WINDOW
from tests.h2_front import Front, front, until
from tests.h2_peers import H2SocketClient, request_head
from tests.harness import in_thread, sleep

__all__ = ["front"]  # the fixture


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
    await until(lambda: front.service.requests and len(front.service.requests[0].body) >= 65535)
    await sleep(0.3)  # long enough for an unbounded relay to buffer megabytes
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
    await sleep(0.3)
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
    await until(lambda: front.service.requests and front.service.requests[0].ended)

    def reset_then_again() -> Any:
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        again = client.request(request_head(path="/after"), body=b"ok")
        client.wait(client.finished(again))
        return client.responses[again]

    response = await in_thread(reset_then_again)
    assert bytes(response.body) == b"ok"
    await until(lambda: front.service.requests[0].reset is not None)
    assert front.service.requests[0].reset == ErrorCodes.CANCEL
