"""HTTP/2 clients that make the gateway work for nothing (issue 22's attack review):
rapid reset (CVE-2023-44487) and control-frame floods end the connection with GOAWAY
ENHANCE_YOUR_CALM, counted as ``abuse``; honest clients are served.

The gateway runs in-process (file catalog, builtin CA, intentions); clients are the
``h2`` library over Python's ssl with a mesh leaf, the service a real ``h2`` server on
127.0.0.1 port 0.
"""

from __future__ import annotations

import select
import ssl
from typing import Any

import pytest
import pytest_twisted
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame

from gwcore.net.h2_abuse import PREMATURE_RESET_MIN_STREAMS
from tests.h2_peers import H2SocketClient, H2TestService, request_head, tls_h2_socket
from tests.harness import in_thread, sni_for
from tests.runtime.test_l7_hardening import RawService
from tests.runtime.test_l7_http2 import h2_client, link, requests_of


@pytest.fixture
def h2_service() -> Any:
    service = H2TestService()
    yield service
    pytest_twisted.blockon(service.port.stopListening())


def _open_and_reset(client: Any, pairs: int, per_write: int) -> None:
    """``pairs`` HEADERS + RST_STREAM, ``per_write`` pairs to a write; stops at GOAWAY
    or once the gateway closed the connection."""
    done = 0
    try:
        while done < pairs and client.goaway is None:
            for _ in range(min(per_write, pairs - done)):
                sid = client.conn.get_next_available_stream_id()
                client.conn.send_headers(sid, request_head("billing", "/r", "GET"), end_stream=True)
                client.conn.reset_stream(sid, ErrorCodes.CANCEL)
                done += 1
            client.flush()
            # Read what came back meanwhile: the GOAWAY is not lost to a reset.
            while client.goaway is None and (
                client.sock.pending() or select.select([client.sock], [], [], 0)[0]
            ):
                if not client.read_once():
                    return
    except (OSError, ssl.SSLError):
        return
    try:
        client.wait(lambda: False)
    except (OSError, ssl.SSLError):
        return


@pytest_twisted.ensureDeferred
async def test_rapid_reset_gets_goaway_enhance_your_calm(gateway, h2_service):
    """A client that opens and at once resets stream after stream gets GOAWAY
    ENHANCE_YOUR_CALM once over half of at least 500 streams were reset early; it is
    counted once as ``abuse`` and no reset stream reached the service."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> Any:
        client = h2_client(gateway)
        # Exactly the bound: the gateway has read everything when it closes, so its
        # GOAWAY is not lost to a TCP reset.
        _open_and_reset(client, PREMATURE_RESET_MIN_STREAMS, 50)
        return client.goaway

    goaway = await in_thread(run)
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await gateway.wait_for(
        lambda: gateway.metric("tgw_http_bad_requests_total", reason="abuse") == 1
    )
    assert len(h2_service.requests) < PREMATURE_RESET_MIN_STREAMS // 10


@pytest_twisted.ensureDeferred
async def test_a_stream_reset_in_the_read_of_its_head_is_never_authorized(gateway, h2_service):
    """Streams whose HEADERS and RST_STREAM arrive together start no exchange: no
    authorization, no access-log record, nothing upstream; the next honest request on
    the same connection is served."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> Any:
        client = h2_client(gateway)
        for _ in range(20):
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, request_head("billing", "/r", "GET"), end_stream=True)
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        sid = client.request(request_head("billing", "/honest", "GET"))
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(run)
    assert response.headers[b":status"] == b"200"
    await gateway.wait_for(lambda: len(requests_of(gateway)) >= 1)
    assert [r["path"] for r in requests_of(gateway)] == ["/honest"]
    assert [s.headers[b":path"] for s in h2_service.requests] == [b"/honest"]


@pytest_twisted.ensureDeferred
async def test_a_standard_method_in_another_case_is_refused_over_http2(gateway, h2_service):
    """``:method delete`` (RFC 9110 §9.1: not DELETE, yet a service may run it as one)
    resets the stream, is counted as ``bad_method`` and never reaches the service; the
    connection goes on serving."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()

    def run() -> Any:
        client = h2_client(gateway)
        bad = client.request(request_head("billing", "/x", "delete"))
        client.wait(client.finished(bad))
        good = client.request(request_head("billing", "/y", "GET"))
        client.wait(client.finished(good))
        return client.responses[bad], client.responses[good]

    bad, good = await in_thread(run)
    assert bad.reset == ErrorCodes.PROTOCOL_ERROR
    assert good.headers[b":status"] == b"200"
    assert gateway.metric("tgw_http_bad_requests_total", reason="bad_method") == 1
    assert [s.headers[b":path"] for s in h2_service.requests] == [b"/y"]


def _flood(gateway: Any, frame: bytes, count: int, per_write: int = 200) -> Any:
    """An open stream, then ``count`` copies of the raw ``frame`` (stream 1); returns
    the GOAWAY the client read, or None."""
    client = h2_client(gateway)
    client.request(request_head("billing", "/f", "POST"), keep_open=True)
    try:
        for start in range(0, count, per_write):
            client.sock.sendall(frame * min(per_write, count - start))
            while client.goaway is None and (
                client.sock.pending() or select.select([client.sock], [], [], 0)[0]
            ):
                if not client.read_once():
                    return client.goaway
            if client.goaway is not None:
                break
        client.wait(lambda: False)
    except (OSError, ssl.SSLError):
        pass
    return client.goaway


EMPTY_DATA = DataFrame(1).serialize()
WINDOW_UPDATE_1 = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x01"  # stream 0, +1


@pytest.mark.parametrize(
    "frame",
    [EMPTY_DATA, WINDOW_UPDATE_1],
    ids=["empty_data", "window_update"],
)
@pytest_twisted.ensureDeferred
async def test_frame_floods_get_goaway_enhance_your_calm(gateway, h2_service, frame):
    """Envoy's flood checks: more than one empty DATA frame in a row
    (``max_consecutive_inbound_frames_with_empty_payload``), or WINDOW_UPDATEs beyond
    ``5 + 2 * (streams + 10 * DATA frames sent)``, end the connection with GOAWAY
    ENHANCE_YOUR_CALM, counted once as ``abuse``."""
    link(gateway, h2_service.port_number, "http2", ("web", "allow"))
    await gateway.start()
    goaway = await in_thread(_flood, gateway, frame, 2000)
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await gateway.wait_for(
        lambda: gateway.metric("tgw_http_bad_requests_total", reason="abuse") == 1
    )


@pytest_twisted.ensureDeferred
async def test_obs_text_from_an_http2_client_reaches_an_http1_service_and_back(gateway, upstreams):
    """HTTP/2 in, HTTP/1.1 out: a header value with bytes >= 0x80 goes to the service
    byte for byte (latin-1), and a response header's obs-text comes back unchanged."""
    service = RawService(
        upstreams, [b"HTTP/1.1 200 OK\r\nX-Back: caf\xe9\r\nContent-Length: 2\r\n\r\nok"]
    )
    link(gateway, service.port, "http", ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> Any:
        sock = tls_h2_socket(gateway.port, sni_for("billing"), files, alpn=())
        client = H2SocketClient(sock, validate=False)
        head = [*request_head("billing", "/x", "GET"), (b"x-a", b"caf\xe9\x80")]
        sid = client.request(head)
        client.wait(client.finished(sid))
        return client.responses[sid]

    response = await in_thread(run)
    assert response.headers[b":status"] == b"200"
    assert response.headers[b"x-back"] == b"caf\xe9"
    assert b"x-a: caf\xe9\x80\r\n" in bytes(service.raw).lower()
