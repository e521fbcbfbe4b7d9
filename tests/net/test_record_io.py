"""The data path's TLS record calls (gwcore.net.bio.RecordIO): the same bytes and the
same errors as pyOpenSSL's ``Connection`` methods, and, through the gateway, no
per-request call of those methods (their per-call cost is what RecordIO removes).

Real OpenSSL throughout: two memory-BIO connections with a real handshake for the
unit tests, the gateway with real sockets and a real TLS service for the relay tests.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from gwcore.net import bio
from gwcore.net.bio import BIO_SEND, PublicRecordIO, RecordIO, record_io
from tests.harness import echo, in_thread, sni_for, tls_connect
from tests.net.test_terminator import setup_catalog
from tests.net.test_upstream_tls import SERVICE_NAME, ExternalPKI, link, tls_server


def _self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "record-io")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _move(source: SSL.Connection, target: SSL.Connection) -> None:
    """Everything ``source`` wrote, into ``target``'s incoming BIO."""
    while True:
        try:
            target.bio_write(source.bio_read(1 << 17))
        except SSL.WantReadError:
            return


def _pair(max_version: int | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    """(server, client) memory-BIO connections after a real handshake (TLS 1.3 unless
    ``max_version`` says otherwise)."""
    cert, key = _self_signed()
    server_ctx = SSL.Context(SSL.TLS_METHOD)
    server_ctx.use_certificate(cert)
    server_ctx.use_privatekey(key)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        client_ctx.set_max_proto_version(max_version)
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
        _move(client, server)
        _move(server, client)
    expected = "TLSv1.2" if max_version == SSL.TLS1_2_VERSION else "TLSv1.3"
    assert client.get_protocol_version_name() == expected
    return server, client


@pytest.fixture(params=["direct", "public"])
def io_kind(request: pytest.FixtureRequest) -> type[RecordIO]:
    return RecordIO if request.param == "direct" else PublicRecordIO


def test_records_go_through_whole_and_in_order_one_per_read(io_kind: type[RecordIO]) -> None:
    """40 KiB encrypted by one side arrive at the other as three records (16, 16 and 8
    KiB: one per read), byte-identical; a fourth read finds no record (WantReadError)."""
    server, client = _pair()
    sending, receiving = io_kind(server), io_kind(client)
    data = bytes(range(256)) * 160  # 40 KiB
    pieces = sending.encrypt(data)
    for piece in pieces:
        receiving.feed(piece)
    got = [receiving.read() for _ in range(3)]
    assert [len(g) for g in got] == [BIO_SEND, BIO_SEND, 40 * 1024 - 2 * BIO_SEND]
    assert b"".join(got) == data
    with pytest.raises(SSL.WantReadError):
        receiving.read()
    # And the other way, a small write: one piece, one record.
    back = receiving.encrypt(b"pong")
    assert len(back) == 1
    sending.feed(back[0])
    assert sending.read() == b"pong"


def test_a_write_larger_than_a_record_is_encrypted_whole(io_kind: type[RecordIO]) -> None:
    """pyOpenSSL's contexts let OpenSSL take part of a write (one 16 KiB record per
    call for 40 KiB here); ``write`` goes on until all of it is encrypted."""
    server, client = _pair()
    sending, receiving = io_kind(server), io_kind(client)
    data = bytes(range(256)) * 160  # 40 KiB
    sending.write(data)
    out: list[bytes] = []
    sending.drain(out)
    for piece in out:
        receiving.feed(piece)
    got = b""
    with contextlib.suppress(SSL.WantReadError):
        while len(got) < len(data):
            got += receiving.read()
    assert got == data


def test_close_notify_is_end_of_stream_and_a_forged_record_an_error(
    io_kind: type[RecordIO],
) -> None:
    """The peer's close_notify makes read raise ZeroReturnError; a record whose bytes
    were altered fails authentication and raises SSL.Error, as pyOpenSSL's recv does."""
    server, client = _pair()
    receiving = io_kind(server)
    client.shutdown()
    out: list[bytes] = []
    io_kind(client).flush(out.append)
    receiving.feed(b"".join(out))
    with pytest.raises(SSL.ZeroReturnError):
        receiving.read()

    server, client = _pair()
    record = bytearray(b"".join(io_kind(client).encrypt(b"x" * 100)))
    record[-1] ^= 0x01  # the authentication tag's last byte
    receiving = io_kind(server)
    receiving.feed(bytes(record))
    with pytest.raises(SSL.Error) as raised:
        receiving.read()
    assert not isinstance(raised.value, SSL.WantReadError | SSL.ZeroReturnError)


def test_record_io_is_direct_unless_pyopenssl_lacks_what_it_relies_on(monkeypatch) -> None:
    """A pyOpenSSL memory-BIO connection gets the direct calls; if pyOpenSSL lacked one
    of the private attributes they use, the public methods are used instead."""
    server, _ = _pair()
    assert type(record_io(server)) is RecordIO
    monkeypatch.setattr(bio, "_PRIVATE", (*bio._PRIVATE, "_no_such_attribute"))
    assert type(record_io(server)) is PublicRecordIO


@pytest.fixture
def pyopenssl_data_calls(monkeypatch) -> Iterator[list[str]]:
    """Names of the pyOpenSSL ``Connection`` data calls made on the reactor's thread."""
    calls: list[str] = []
    reactor_thread = threading.get_ident()
    for name in ("bio_write", "recv", "sendall", "bio_read"):
        original = getattr(SSL.Connection, name)

        def counted(self, *args, _original=original, _name=name):
            if threading.get_ident() == reactor_thread:
                calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(SSL.Connection, name, counted)
    yield calls


async def _run_keepalive(gateway, calls: list[str], rounds: int = 20) -> list[int]:
    """``rounds`` 1 KiB request/echo exchanges on one kept-alive connection through
    the gateway; the count of pyOpenSSL data calls after each exchange."""
    c, k, root = gateway.client_files("web")
    after: list[int] = []

    def run() -> None:
        with tls_connect(gateway.port, sni_for("billing"), c, k, root) as sock:
            for i in range(rounds):
                payload = bytes([i]) * 1024
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(65536)
                    assert chunk, "the gateway closed the connection"
                    got += chunk
                assert got == payload
                after.append(len(calls))

    await in_thread(run)
    return after


@pytest_twisted.ensureDeferred
async def test_a_kept_alive_relay_makes_no_pyopenssl_data_call_per_request(
    gateway, upstreams, pyopenssl_data_calls
):
    """Terminated mTLS to a plain service: once the connection is established, a
    request and its answer cross the gateway's TLS layer without one pyOpenSSL
    ``Connection`` data call (bio_write, recv, sendall, bio_read)."""
    up = upstreams(echo)
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    after = await _run_keepalive(gateway, pyopenssl_data_calls)
    assert after[-1] == after[4], (after, pyopenssl_data_calls[after[4] :])


@pytest_twisted.ensureDeferred
async def test_an_originating_relay_makes_no_pyopenssl_data_call_per_request(
    gateway, upstreams, tmp_path, pyopenssl_data_calls
):
    """TLS origination (terminated mTLS in, TLS to the service): per request, neither
    TLS connection of the gateway makes a pyOpenSSL ``Connection`` data call."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    after = await _run_keepalive(gateway, pyopenssl_data_calls)
    assert after[-1] == after[4], (after, pyopenssl_data_calls[after[4] :])


def _wire(sending: RecordIO, *messages: bytes) -> bytes:
    """The ciphertext of ``messages``, each encrypted on its own (one or more records)."""
    return b"".join(b"".join(sending.encrypt(m)) for m in messages)


def test_decrypt_takes_every_whole_record_and_keeps_a_cut_one_for_later(
    io_kind: type[RecordIO],
) -> None:
    """``decrypt`` appends the plaintext of every whole record fed so far, one record
    per read, in order; a record cut short is kept by OpenSSL and comes out whole once
    its end is fed; with nothing left it returns without raising. Records that all
    carry data make OpenSSL write nothing (the direct calls say so: no flush)."""
    server, client = _pair()
    sending, receiving = io_kind(client), io_kind(server)
    first, big, last = b"a" * 100, bytes(range(256)) * 160, b"tail!"
    wire = _wire(sending, first, big, last)
    receiving.feed(wire[:-3])
    plain: list[bytes] = []
    wrote = receiving.decrypt(plain)
    assert plain == [first, big[:BIO_SEND], big[BIO_SEND : 2 * BIO_SEND], big[2 * BIO_SEND :]]
    if io_kind is RecordIO:
        assert wrote is False
    receiving.feed(wire[-3:])
    plain.clear()
    receiving.decrypt(plain)
    assert plain == [last]
    plain.clear()
    receiving.decrypt(plain)  # nothing fed: no record, no exception
    assert plain == []


def test_decrypt_reports_what_openssl_wrote_for_a_record_without_data(
    io_kind: type[RecordIO],
) -> None:
    """A data record and then a record that makes OpenSSL answer (a TLS 1.2
    renegotiation ClientHello, refused with an alert) in one feed: the data comes out,
    and ``decrypt`` says OpenSSL wrote (its no_renegotiation alert), so the caller
    flushes the answer at once."""
    server, client = _pair(max_version=SSL.TLS1_2_VERSION)
    sending, receiving = io_kind(client), io_kind(server)
    wire = _wire(sending, b"before the hello")
    client.renegotiate()
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    out: list[bytes] = []
    sending.drain(out)
    receiving.feed(wire + b"".join(out))
    plain: list[bytes] = []
    assert receiving.decrypt(plain) is True
    assert plain == [b"before the hello"]
    answer: list[bytes] = []
    receiving.drain(answer)
    assert answer, "OpenSSL's answer to the hello was not in the outgoing BIO"


def test_connections_sharing_the_read_buffer_keep_their_own_bytes() -> None:
    """Every connection decrypts into one process-wide buffer: what one connection
    returned is a copy, unchanged by the next connection's records."""
    (server_a, client_a), (server_b, client_b) = _pair(), _pair()
    a, b = RecordIO(server_a), RecordIO(server_b)
    a.feed(_wire(RecordIO(client_a), b"A" * 5000))
    b.feed(_wire(RecordIO(client_b), b"B" * 6000))
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    a.decrypt(got_a)
    b.decrypt(got_b)
    assert got_a == [b"A" * 5000] and got_b == [b"B" * 6000]
