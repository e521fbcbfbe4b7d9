"""Abusive HTTP/1.1 clients at an L7 destination: answered or closed, counted, never a crash.

The gateway runs in-process (file catalog, builtin CA, intentions) with a real HTTP/1.1
service (h11, 127.0.0.1 port 0). Each client is a real pyOpenSSL mesh client that
writes raw bytes, optionally half-closes (TLS close_notify) and reads until the
gateway closes. Twisted's log events are captured: a ``log_failure`` (what becomes a
traceback on the gateway's stderr) fails the test.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time

import h11
import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.logger import formatEvent, globalLogPublisher

from tests.harness import in_thread, sni_for
from tests.runtime.l7_support import HttpService, get, link, mesh_http

GET = b"GET /ok HTTP/1.1\r\nHost: billing\r\n\r\n"


class Service(HttpService):
    """An :class:`HttpService` that writes without Nagle's delay (its head, body and end
    are separate writes) and takes a cut upload (the gateway ends a connection whose
    client sent half a body) as the gateway's right."""

    def _serve(self, sock: socket.socket, up) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(h11.RemoteProtocolError):
            super()._serve(sock, up)


def raw_exchange(gateway, payload: bytes, half_close: bool) -> bytes:
    """Write ``payload`` (then close_notify if ``half_close``), read until the gateway
    closes (or 20 s pass: a kernel receive timeout bounds every read)."""
    cert, key, root = gateway.client_files("web")
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.load_verify_locations(str(root))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    raw = socket.create_connection(("127.0.0.1", gateway.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
    conn = SSL.Connection(ctx, raw)
    conn.set_tlsext_host_name(sni_for("billing").encode())
    conn.set_connect_state()
    conn.do_handshake()
    got = bytearray()
    try:
        conn.sendall(payload)
        if half_close:
            conn.shutdown()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except SSL.WantReadError:
                continue
            except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error):
                break
            if not data:
                break
            got += data
    except (SSL.SysCallError, SSL.Error, OSError):
        pass  # the gateway closed while we still wrote: what it answered is in ``got``
    finally:
        raw.close()
    return bytes(got)


CASES = {
    # name: (payload, half_close, expected status of the first answer or None: closed)
    "garbage": (b"\x00\x01\x02 not http at all\r\n\r\n", False, 400),
    "truncated_request_line": (b"GET /tru", True, None),
    "truncated_head": (b"GET / HTTP/1.1\r\nHost: bil", True, None),
    "truncated_body": (
        b"POST /up HTTP/1.1\r\nHost: billing\r\nContent-Length: 100\r\n\r\nabc",
        True,
        None,
    ),
    "absurd_content_length": (
        b"POST /up HTTP/1.1\r\nHost: billing\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\nabc",
        False,
        400,
    ),
    "content_length_of_5000_digits": (
        b"POST /up HTTP/1.1\r\nHost: billing\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        False,
        400,
    ),
    "negative_content_length": (
        b"POST /up HTTP/1.1\r\nHost: billing\r\nContent-Length: -1\r\n\r\n",
        False,
        400,
    ),
    "ten_thousand_headers": (
        b"GET / HTTP/1.1\r\nHost: billing\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n",
        False,
        431,
    ),
    "one_mib_request_line": (b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n\r\n", False, 431),
    "bad_chunk_size": (
        b"POST /up HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        None,
    ),
    "half_close_after_request": (GET, True, 200),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest_twisted.ensureDeferred
async def test_abusive_client_is_answered_or_closed_cleanly(gateway, upstreams, case):
    """Each abusive shape gets a clean answer (its status) or a clean close, with no
    logged failure (no traceback), at most one log line about it, and the gateway
    serves the next client normally."""
    payload, half_close, status = CASES[case]
    service = Service(upstreams)
    service.cut_ok = True  # a truncated upload's connection is cut by the gateway
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        answer = await in_thread(raw_exchange, gateway, payload, half_close)
        ok = await in_thread(_normal, gateway)
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [formatEvent(e) for e in events if e.get("log_failure") is not None]
    assert failures == []
    if status is not None:
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert len(statuses) <= 1 or case == "half_close_after_request"
    about = [
        formatEvent(e)
        for e in events
        if e.get("log_namespace", "").startswith("tgw.http")
        and "bad HTTP request" in formatEvent(e)
    ]
    assert len(about) <= 1, about
    if status is not None and status >= 400:
        assert len(about) == 1
    assert ok == 200


def _normal(gateway) -> int:
    conn = mesh_http(gateway, "billing", "web")
    try:
        return get(conn, "/after")[0]
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_many_pipelined_requests_are_all_answered_in_order(gateway, upstreams):
    """500 requests written at once, then a half-close: all are answered 200, in order,
    and the connection closes; no logged failure."""
    service = Service(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    n = 500
    payload = b"".join(f"GET /p/{i} HTTP/1.1\r\nHost: billing\r\n\r\n".encode() for i in range(n))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        answer = await in_thread(raw_exchange, gateway, payload, True)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e for e in events if e.get("log_failure") is not None] == []
    assert answer.count(b"HTTP/1.1 200 ") == n
    bodies = re.findall(rb"GET /p/(\d+) 0", answer)
    assert [int(b) for b in bodies] == list(range(n))
    assert [r.target for r in service.requests] == [f"/p/{i}" for i in range(n)]
