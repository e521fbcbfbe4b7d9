"""Bulk through the terminator: full-size TLS records, one socket write per read, and
every byte in order (gwcore.net.bio.encrypt, fasttcp's writeSequence).

Records of 4 KiB, each flushed on its own, made a 1 MiB response cost 256 records and
256 ``send`` calls; both are counted here on real sockets.
"""

from __future__ import annotations

import hashlib
import random
import socket

import pytest_twisted

from gwcore.net import fasttcp
from tests.harness import in_thread, sni_for, tls_connect
from tests.net.test_terminator import MemoryClient, exchange, setup_catalog
from tests.net.test_upstream_tls import SERVICE_NAME, ExternalPKI, link, tls_server

MiB = 1 << 20


def sender(body: bytes):
    """An upstream that answers the first byte it reads with ``body`` in one write."""

    def handle(sock: socket.socket, upstream) -> None:
        sock.recv(1)
        sock.sendall(body)
        while sock.recv(65536):
            pass

    return handle


class RecordCounter:
    """Counts the whole TLS records (5-byte header, then as many bytes as it says) in
    a stream fed in any pieces; keeps at most one unfinished record."""

    def __init__(self) -> None:
        self.complete = 0
        self._rest = bytearray()

    def feed(self, data: bytes) -> None:
        rest = self._rest
        rest += data
        while len(rest) >= 5:
            end = 5 + ((rest[3] << 8) | rest[4])
            if len(rest) < end:
                return
            del rest[:end]
            self.complete += 1


class _CountedSocket:
    """A socket whose ``recv`` feeds what it returns to a :class:`RecordCounter`."""

    def __init__(self, sock: socket.socket, records: RecordCounter) -> None:
        self._sock = sock
        self._records = records

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._records.feed(data)
        return data


class CountingClient(MemoryClient):
    """A memory-BIO client that counts the whole TLS records arriving from the gateway."""

    def __init__(self, *args, **kwargs) -> None:
        self.records = RecordCounter()
        super().__init__(*args, **kwargs)
        self.sock = _CountedSocket(self.sock, self.records)  # type: ignore[assignment]


@pytest_twisted.ensureDeferred
async def test_a_1_mib_response_reaches_the_client_in_16_kib_records_and_few_writes(
    gateway, upstreams, monkeypatch
):
    """A 1 MiB answer from the service arrives byte-identical in records of up to
    16 KiB (64 of them, not 256 of 4 KiB), and the gateway hands the client's socket
    the ciphertext of each read from the service in one call, not one per record."""
    body = random.Random(3).randbytes(MiB)
    up = upstreams(sender(body))
    setup_catalog(gateway, {"billing": [up.port]})
    writes = []
    for name in ("write", "writeSequence"):
        original = getattr(fasttcp.Server, name)

        def counted(transport, data, _original=original):
            writes.append(len(data))
            return _original(transport, data)

        monkeypatch.setattr(fasttcp.Server, name, counted)
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> tuple[bytes, int]:
        client = CountingClient(gateway.port, sni_for("billing"), files)
        try:
            after_handshake = client.records.complete
            writes.clear()
            client.tls.sendall(b"!")
            got = client.read_exactly(MiB)
            return got, client.records.complete - after_handshake
        finally:
            client.close()

    got, records = await in_thread(run)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    # 64 records of 16 KiB; a read from the service that is no multiple of 16 KiB
    # ends in a shorter one, and the session tickets come after the handshake.
    assert 64 <= records <= 96, records
    assert len(writes) <= 32, f"{len(writes)} writes to the client for 1 MiB"


@pytest_twisted.ensureDeferred
async def test_originated_tls_carries_4_mib_each_way_byte_identical(gateway, upstreams, tmp_path):
    """Through TLS origination (the gateway as the service's TLS client), 4 MiB of
    random bytes go to a TLS echo service and come back unchanged and in order."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    data = random.Random(5).randbytes(4 * MiB)
    c, k, root = gateway.client_files("web")

    def run() -> bytes:
        with tls_connect(gateway.port, sni_for("billing"), c, k, root) as sock:
            return exchange(sock, data, recv_limit=len(data))

    got = await in_thread(run)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
