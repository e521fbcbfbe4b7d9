"""The HTTP/2 downstream codec (gwcore.net.h2_downstream): denials, gRPC answers and
protocol errors with a real h2 client over TLS (tests.h2_front), and in memory (a
ClientLink collecting bytes) for drain and unsendable heads.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest_twisted
from h2.errors import ErrorCodes

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.h2_downstream import Http2Server
from gwcore.net.l7_core import L7Limits
from tests.h2_front import Front, front
from tests.h2_peers import request_head
from tests.harness import in_thread

__all__ = ["front"]  # the fixture


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
