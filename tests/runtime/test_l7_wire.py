"""What an L7 HTTP/1.1 exchange costs on the wire: TLS records and reads of the client.

A real gateway (file catalog, builtin CA, intentions) and a real TLS client on memory
BIOs, so the test sees every TLS record the gateway sends; the service is a real h11
server on 127.0.0.1 port 0 that writes each whole response with one ``sendall``.
"""

from __future__ import annotations

import socket
import ssl
import struct

import h11
import pytest_twisted

from tests.h2_peers import serve_h2_echo
from tests.harness import (
    client_context,
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sni_for,
    tls_connect,
    write_json,
)
from tests.runtime.l7_support import HttpService, link, service_defaults

BODY = b"x" * 1024


def _one_write_service(sock: socket.socket, up) -> None:
    """Answers every request with a 1 KiB body; head, body and end in one write."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.EndOfMessage):
            head = [("content-type", "text/plain"), ("content-length", str(len(BODY)))]
            sock.sendall(
                conn.send(h11.Response(status_code=200, headers=head))
                + conn.send(h11.Data(data=BODY))
                + conn.send(h11.EndOfMessage())
            )
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            sock.close()
            return


class RecordCountingClient:
    """An mTLS HTTP/1.1 client on memory BIOs that counts the TLS records it receives."""

    def __init__(self, gateway, source: str, service: str) -> None:
        cert, key, root = gateway.client_files(source)
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(cert, key, root).wrap_bio(
            self.incoming, self.outgoing, server_hostname=sni_for(service)
        )
        self.raw = b""  # received bytes not yet counted (a partial record header)
        self.records = 0
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()
        self.h11 = h11.Connection(h11.CLIENT)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the gateway closed the connection"
        self.raw += data
        while len(self.raw) >= 5:
            (length,) = struct.unpack("!H", self.raw[3:5])
            if len(self.raw) < 5 + length:
                break
            self.raw = self.raw[5 + length :]
            self.records += 1
        self.incoming.write(data)

    def get(self, path: str) -> tuple[int, bytes, int]:
        """One GET; its status, body and the TLS records that carried the response."""
        request = self.h11.send(h11.Request(method="GET", target=path, headers=[("host", "b")]))
        self.tls.write(request + self.h11.send(h11.EndOfMessage()))
        self._flush()
        before = self.records
        status, body = 0, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    self.h11.receive_data(self.tls.read(65536))
                except ssl.SSLWantReadError:
                    self._flush()
                    self._receive()
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()
                return status, body, self.records - before

    def close(self) -> None:
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_a_small_response_read_at_once_reaches_the_client_in_one_tls_record(
    gateway, upstreams
):
    """A service response that arrives in one read (head, 1 KiB body, end) is written to
    the client as one TLS record, not one per piece the codec wrote (head, then body)."""
    upstream = upstreams(_one_write_service)
    link(gateway, upstream.port, ("web", "allow"))
    await gateway.start()

    def run() -> list[tuple[int, bytes, int]]:
        client = RecordCountingClient(gateway, "web", "billing")
        try:
            # The first response may share reads with the session tickets: count later ones.
            return [client.get(f"/item/{i}") for i in range(3)][1:]
        finally:
            client.close()

    for status, body, records in await in_thread(run):
        assert (status, body) == (200, BODY)
        assert records == 1


@pytest_twisted.ensureDeferred
async def test_a_denial_is_one_tls_record_and_the_connection_stays_usable(gateway, upstreams):
    """The gateway's own answer (403 ``RBAC: access denied``: head and body) goes out in
    one TLS record, and the next request on the connection is answered too."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "deny"))
    await gateway.start()

    def run() -> list[tuple[int, bytes, int]]:
        client = RecordCountingClient(gateway, "web", "billing")
        try:
            return [client.get("/a") for _ in range(3)][1:]
        finally:
            client.close()

    for status, body, records in await in_thread(run):
        assert (status, body) == (403, b"RBAC: access denied")
        assert records == 1
    assert service.requests == []


@pytest_twisted.ensureDeferred
async def test_a_client_still_writing_after_a_bad_request_gets_its_400(gateway, upstreams):
    """A client that keeps writing (4 MiB) after a request the gateway refuses (400:
    Content-Length with Transfer-Encoding) is not reset: the gateway reads and drops
    the rest for a while after its answer, so the client reads the whole ``400``,
    then the end of the connection. Nothing reaches the service."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> bytes:
        cert, key, root = gateway.client_files("web")
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        got = bytearray()
        try:
            sock.sendall(
                b"POST /up HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            sock.sendall(b"x" * (4 << 20))
            while True:
                data = sock.recv(65536)
                if not data:
                    return bytes(got)
                got += data
        except (OSError, ssl.SSLError) as e:
            return bytes(got) + f"<{type(e).__name__}>".encode()
        finally:
            sock.close()

    answer = await in_thread(run)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.endswith(b"Bad Request\n"), answer[-200:]
    assert service.requests == []


@pytest_twisted.ensureDeferred
async def test_an_http2_services_small_response_reaches_an_http1_client_in_one_tls_record(
    gateway, upstreams
):
    """An http2 destination served to an HTTP/1.1 client: a response the service sends
    in one write (HEADERS, DATA, trailers) is written to the client as one TLS record,
    as from an HTTP/1.1 service (the HTTP/2 connection's read is one write batch)."""
    upstream = upstreams(lambda sock, up: serve_h2_echo(sock))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", upstream.port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing", "http2"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()

    def run() -> list[tuple[int, bytes, int]]:
        client = RecordCountingClient(gateway, "web", "billing")
        try:
            # The first response may share reads with the session tickets: count later ones.
            return [client.get(f"/item/{i}") for i in range(3)][1:]
        finally:
            client.close()

    for status, body, records in await in_thread(run):
        assert (status, body) == (200, b"")
        assert records == 1
