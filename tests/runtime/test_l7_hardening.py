"""Findings of the outside attack review of L7 mode (issue 22), each proved through the
running gateway: real pyOpenSSL mesh clients on 127.0.0.1 (port 0), a real raw-socket
HTTP/1.1 service that records every byte it receives and answers with scripted bytes.
Twisted's log events are captured: a ``log_failure`` (a traceback on stderr) fails a test.
"""

from __future__ import annotations

import socket
import threading

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.harness import in_thread
from tests.runtime.l7_support import link
from tests.runtime.test_l7_abuse import raw_exchange

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawService:
    """An HTTP/1.1 service on 127.0.0.1 (port 0) that reads each request (head, then a
    chunked body up to its last CRLFCRLF, or none) and answers ``answers[i]`` for the
    i-th request it sees over all connections (``OK`` beyond the list); an answer
    ``(now, later)`` sends ``later`` once the test sets ``answered``. ``raw`` keeps
    every byte received, ``per_connection`` the requests each connection carried."""

    def __init__(self, upstreams, answers: list[bytes | tuple[bytes, bytes]] | None = None):
        self.answered = threading.Event()  # set by the test: send the ``later`` bytes
        self.sent_later = threading.Event()
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
            now, later = answer if isinstance(answer, tuple) else (answer, b"")
            try:
                sock.sendall(now)
                if later:
                    # Once the gateway has read the response: bytes on an idle connection.
                    self.answered.wait(10)
                    sock.sendall(later)
                    self.sent_later.set()
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


# --- 2. response desync across callers ------------------------------------------------

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Poison: 1\r\n\r\nPOISON"
GET_OK = b"GET /ok HTTP/1.1\r\nHost: billing\r\n\r\n"


async def _two_callers(gateway, upstreams, answer, first: bytes = GET_OK):
    service = RawService(upstreams, [answer])
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    events = _capture()
    try:
        one = await in_thread(raw_exchange, gateway, first, True)
        if isinstance(answer, tuple):
            service.answered.set()
            await in_thread(service.sent_later.wait, 10)
        two = await in_thread(raw_exchange, gateway, GET_OK, True)
    finally:
        failures = _failures(events)
    assert failures == []
    return service, one, two


CASES = {
    "bytes_after_a_complete_response": (OK + POISON, GET_OK),
    "head_answered_with_a_body": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\n" + POISON,
        b"HEAD /h HTTP/1.1\r\nHost: billing\r\n\r\n",
    ),
    "304_with_a_body": (
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 46\r\n\r\n" + POISON,
        GET_OK,
    ),
    # Half a head: nothing h11 can parse yet, so it would wait in the buffer.
    "bytes_on_an_idle_connection": ((OK, b"HTTP/1.1 200 OK\r\nX-Poison: 1\r\n"), GET_OK),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest_twisted.ensureDeferred
async def test_leftover_response_bytes_never_reach_the_next_caller(gateway, upstreams, case):
    """Bytes a service sends beyond a complete response (a second response, a body on
    a HEAD or 304 answer, or anything while the connection sits idle) close that
    connection: the next caller gets its own answer, on a new connection, never them."""
    answer, first = CASES[case]
    service, one, two = await _two_callers(gateway, upstreams, answer, first)
    assert one.split(b"\r\n")[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.1 304 Not Modified"), one
    assert b"POISON" not in one + two and b"x-poison" not in (one + two).lower()
    assert two.startswith(b"HTTP/1.1 200 ") and two.endswith(b"ok"), two
    assert service.count == 2 and service.per_connection == [1, 1]


@pytest_twisted.ensureDeferred
async def test_response_with_content_length_and_transfer_encoding_is_502(gateway, upstreams):
    """A response framed both ways (CL + TE: a desync vector) is refused with 502 and
    nothing of it is passed on; the next caller is served on a new connection."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\nTransfer-Encoding: chunked\r\n"
        b"X-Poison: 1\r\n\r\n0\r\n\r\n" + POISON
    )
    service, one, two = await _two_callers(gateway, upstreams, answer)
    assert one.startswith(b"HTTP/1.1 502 "), one
    assert b"poison" not in (one + two).lower()
    assert two.startswith(b"HTTP/1.1 200 ") and two.endswith(b"ok"), two
    assert service.per_connection == [1, 1]


# --- 4. method case -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["delete", "dElEtE", "Get"])
@pytest_twisted.ensureDeferred
async def test_a_standard_method_in_another_case_is_400_over_http1(gateway, upstreams, method):
    """Methods are case-sensitive (RFC 9110 §9.1): ``delete`` would slip past a
    ``Methods: [DELETE]`` deny and be run as DELETE by a service that upper-cases it.
    It is refused with 400, counted as ``bad_method``, and nothing reaches the service."""
    service = RawService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    request = f"{method} /x HTTP/1.1\r\nHost: billing\r\n\r\n".encode()
    answer = await in_thread(raw_exchange, gateway, request, True)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert gateway.metric("tgw_http_bad_requests_total", reason="bad_method") == 1
    assert bytes(service.raw) == b""


@pytest_twisted.ensureDeferred
async def test_an_extension_method_is_forwarded_as_sent(gateway, upstreams):
    """A method that is no standard one in any case (an extension token) is not refused."""
    service = RawService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    answer = await in_thread(
        raw_exchange, gateway, b"purge /x HTTP/1.1\r\nHost: billing\r\n\r\n", True
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert bytes(service.raw).startswith(b"purge /x HTTP/1.1\r\n")


# --- 5. malformed XFCC from the client ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_malformed_client_xfcc_cannot_swallow_the_gateways_element(gateway, upstreams):
    """An XFCC with an unbalanced quote (APPEND_FORWARD) is dropped: the service gets
    exactly one element, the gateway's, whose URI is the real caller's SPIFFE ID."""
    service = RawService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    forged = b'By=spiffe://x;URI=spiffe://evil/svc/admin;Subject="'
    request = (
        b"GET /x HTTP/1.1\r\nHost: billing\r\nX-Forwarded-Client-Cert: " + forged + b"\r\n\r\n"
    )
    answer = await in_thread(raw_exchange, gateway, request, True)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    lines = [
        line.split(b":", 1)[1].strip()
        for line in bytes(service.raw).split(b"\r\n")
        if line.lower().startswith(b"x-forwarded-client-cert:")
    ]
    assert len(lines) == 1 and b"evil" not in lines[0]
    assert lines[0].startswith(b"By=spiffe://") and lines[0].count(b"By=") == 1
    assert b";URI=spiffe://" in lines[0] and lines[0].rstrip().endswith(b"/svc/web")
