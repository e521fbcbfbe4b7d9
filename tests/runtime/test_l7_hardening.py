"""Findings of the outside attack review of L7 mode (issue 22), each proved through the
running gateway: real pyOpenSSL mesh clients on 127.0.0.1 (port 0), a real raw-socket
HTTP/1.1 service that records every byte it receives and answers with scripted bytes.
Twisted's log events are captured: a ``log_failure`` (a traceback on stderr) fails a test.
"""

from __future__ import annotations

import socket
import threading

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.harness import in_thread
from tests.runtime.l7_support import link
from tests.runtime.test_l7_abuse import raw_exchange

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawService:
    """An HTTP/1.1 service on 127.0.0.1 (port 0) that reads each request (head, then a
    chunked body up to its last CRLFCRLF, or none) and answers ``answers[i]`` for the
    i-th request it sees over all connections (``OK`` beyond the list). ``raw`` keeps
    every byte received, ``per_connection`` the requests each connection carried."""

    def __init__(self, upstreams, answers: list[bytes] | None = None) -> None:
        self.answers = list(answers or [])
        self.raw = bytearray()
        self.count = 0
        self.per_connection: list[int] = []
        self.lock = threading.Lock()
        self.upstream = upstreams(self._serve)

    @property
    def port(self) -> int:
        return self.upstream.port

    def _serve(self, sock: socket.socket, up) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        index = len(self.per_connection)
        self.per_connection.append(0)
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0 and b"chunked" in bytes(buffer[:end]).lower():
                last = buffer.find(b"\r\n0\r\n", end)
                end = buffer.find(b"\r\n\r\n", last + 2) if last >= 0 else -1
            if end < 0:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.raw += data
                buffer += data
                continue
            del buffer[: end + 4]
            with self.lock:
                answer = self.answers[self.count] if self.count < len(self.answers) else OK
                self.count += 1
                self.per_connection[index] += 1
            try:
                sock.sendall(answer)
            except OSError:
                return


def _capture():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events


def _failures(events: list[dict]) -> list[str]:
    globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e.get("log_failure") is not None]


# --- 1. obs-text in header values -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_obs_text_header_bytes_round_trip_both_ways(gateway, upstreams):
    """A request header value with bytes >= 0x80 (obs-text, RFC 9110 §5.5) reaches the
    service byte for byte, and so does a response header's back to the client: no 502,
    no traceback. (Before: UnicodeEncodeError in h11, a leaked pool slot, no answer.)"""
    service = RawService(
        upstreams, [b"HTTP/1.1 200 OK\r\nX-Back: caf\xe9\xff\r\nContent-Length: 2\r\n\r\nok"]
    )
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    events = _capture()
    try:
        answer = await in_thread(
            raw_exchange,
            gateway,
            b"GET /x HTTP/1.1\r\nHost: billing\r\nX-A: caf\xe9\x80\r\n\r\n",
            True,
        )
    finally:
        failures = _failures(events)
    assert failures == []
    assert b"x-a: caf\xe9\x80\r\n" in bytes(service.raw).lower()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"caf\xe9\xff\r\n" in answer


@pytest_twisted.ensureDeferred
async def test_obs_text_in_a_chunked_trailer_reaches_the_service(gateway, upstreams):
    """A chunked request's trailer with obs-text is forwarded as sent, the request is
    answered and the destination keeps serving (its pool slot was not leaked)."""
    service = RawService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    events = _capture()
    request = (
        b"POST /t HTTP/1.1\r\nHost: billing\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-T: \xe9t\xe9\r\n\r\n"
    )
    try:
        first = await in_thread(raw_exchange, gateway, request, True)
        second = await in_thread(
            raw_exchange, gateway, b"GET /ok HTTP/1.1\r\nHost: billing\r\n\r\n", True
        )
    finally:
        failures = _failures(events)
    assert failures == []
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    assert second.startswith(b"HTTP/1.1 200 "), second[:200]
    assert b"x-t: \xe9t\xe9\r\n" in bytes(service.raw).lower()
