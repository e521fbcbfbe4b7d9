"""The HTTP/2 upstream pool (gwcore.net.h2_upstream) against a real h2 server on
127.0.0.1:0, driven by a real h2 client through the codec (tests.h2_front):
multiplexing, MAX_CONCURRENT_STREAMS, GOAWAY, endpoint retirement, idle timeout.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest_twisted

from tests.h2_front import Front, front, until
from tests.h2_peers import H2TestService, request_head
from tests.harness import in_thread

__all__ = ["front"]  # the fixture


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
    await until(lambda: front.service.connections[0].transport.disconnected)


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
        await until(lambda: first.closed and not front.pool.connections)
        assert bytes((await in_thread(call, "/two")).body) == b"x"
        assert len(front.service.connections) == 2
    finally:
        await front.close()
