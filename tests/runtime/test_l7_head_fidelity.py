"""HTTP/1.1 request framing at an L7 destination through a real gateway (file catalog,
builtin CA, intentions; real TLS clients with a mesh leaf and no ALPN; services on
127.0.0.1 port 0): the deadline before the protocol is decided, empty lines before a
request line (RFC 9112 §2.2), and a malformed chunked body before any response."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest_twisted

from tests.harness import in_thread, sni_for, tls_connect
from tests.runtime.l7_support import HttpService, link

HEAD_TIMEOUT = 0.3


def raw_exchange(gateway, payload: bytes, wait: float = 8.0) -> tuple[bytes, float]:
    """Send ``payload`` over a mesh TLS connection (no ALPN) and read until the gateway
    closes; the bytes read and the seconds from the send to the close."""
    cert, key, root = gateway.client_files("web")
    sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root, timeout=wait)
    try:
        assert sock.selected_alpn_protocol() is None
        started = time.monotonic()
        sock.sendall(payload)
        out = bytearray()
        try:
            while data := sock.recv(65536):
                out += data
        except (ConnectionResetError, TimeoutError) as e:
            out += f"<{type(e).__name__}>".encode()
        return bytes(out), time.monotonic() - started
    finally:
        sock.close()


def statuses(data: bytes) -> list[bytes]:
    """The status codes of the responses in ``data`` (status lines; the service's bodies
    are short text with no CRLF)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)


@pytest_twisted.ensureDeferred
async def test_a_client_stalling_in_the_h2_preface_is_closed_at_the_head_timeout(
    gateway, upstreams
):
    """No ALPN, and the client sends ``PRI * HTTP/2.0\\r\\n`` (the start of the HTTP/2
    preface) and then nothing: with ``request_head_timeout`` 0.3 s and ``idle_timeout``
    1 h, the gateway closes it after the head timeout (it stayed open before: no codec
    existed yet to time it), counts ``request_head_timeout`` and records close cause
    ``bad_request``; the service sees no connection."""
    gateway.site_options = {"request_head_timeout": f"{HEAD_TIMEOUT}s", "idle_timeout": "1h"}
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    data, took = await in_thread(raw_exchange, gateway, b"PRI * HTTP/2.0\r\n", 6.0)
    assert data == b""  # close_notify and FIN, no answer (no protocol to answer in)
    assert HEAD_TIMEOUT - 0.05 <= took < HEAD_TIMEOUT + 2.5
    assert gateway.metric("tgw_http_bad_requests_total", reason="request_head_timeout") == 1
    await gateway.wait_for(
        lambda: any(r.get("record_type") == "closed" for r in gateway.access_records())
    )
    closed = [r for r in gateway.access_records() if r.get("record_type") == "closed"]
    assert [r["close_cause"] for r in closed] == ["bad_request"]
    assert service.connections == 0


@pytest_twisted.ensureDeferred
async def test_empty_lines_before_request_lines_are_ignored(gateway, upstreams):
    """A ``CRLF`` before the first request line, and a ``CRLF`` after a ``POST`` body
    (``Content-Length: 2``) before the next request on the same connection: every
    request is answered ``200`` by the service, which gets exactly the two-byte body;
    no bad request is counted. (h11 alone answered both with ``400``.)"""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    first, _ = await in_thread(
        raw_exchange,
        gateway,
        b"\r\nGET /x HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n",
    )
    assert statuses(first) == [b"200"]
    second, _ = await in_thread(
        raw_exchange,
        gateway,
        b"POST /p HTTP/1.1\r\nHost: billing\r\nContent-Length: 2\r\n\r\nab\r\n"
        b"GET /y HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n",
    )
    assert statuses(second) == [b"200", b"200"]
    assert [(r.method, r.target, r.body) for r in service.requests] == [
        ("GET", "/x", b""),
        ("POST", "/p", b"ab"),
        ("GET", "/y", b""),
    ]
    assert gateway.metric("tgw_http_bad_requests_total") == 0


@pytest_twisted.ensureDeferred
async def test_a_malformed_chunk_before_the_response_is_answered_400(gateway, upstreams):
    """``POST`` chunked ``5\\r\\nhello\\r\\n`` then ``ZZ`` (not a chunk size) and a request
    behind it: the client gets ``400`` (it got a bare close before), ``bad_chunk`` is
    counted; the service never gets a complete request (the streamed first chunk, no
    last chunk), nor the one behind the bad chunk, and its connection is closed."""
    seen = bytearray()
    ended = threading.Event()

    def recorder(sock: socket.socket, _up: object) -> None:
        # Records what the gateway forwards; answers nothing (the head would have to
        # wait for the body anyway).
        sock.settimeout(10)
        try:
            while data := sock.recv(65536):
                seen.extend(data)
        except OSError:
            pass
        ended.set()

    service = upstreams(recorder)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answer, _ = await in_thread(
        raw_exchange,
        gateway,
        b"POST /x HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nZZ\r\nGET /smuggled HTTP/1.1\r\nHost: billing\r\n\r\n",
    )
    assert statuses(answer) == [b"400"] and answer.endswith(b"Bad Request\n")
    assert b"connection: close" in answer.lower()
    assert gateway.metric("tgw_http_bad_requests_total", reason="bad_chunk") == 1
    # The body is streamed: its first chunk went out before the bad one came; the
    # request is never completed (no last chunk) and its connection is closed.
    assert service.accepted == 1
    assert await in_thread(ended.wait, 5)
    assert seen.startswith(b"POST /x HTTP/1.1\r\n") and seen.endswith(b"\r\n\r\n5\r\nhello\r\n")
    assert b"/smuggled" not in seen
