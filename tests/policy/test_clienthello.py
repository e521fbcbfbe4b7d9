"""The sans-IO ClientHello parser: real hellos from OpenSSL, hand-built edge cases, and a
hypothesis fuzz that it never raises and never examines more than its bound."""

from __future__ import annotations

import ssl
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.clienthello import (
    HELLO_ERROR_REASONS,
    NEED_MORE,
    ClientHello,
    ClientHelloParser,
    HelloError,
)


def openssl_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of Python's own TLS client (an implementation we did not write)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def record(payload: bytes, content_type: int = 22, version: bytes = b"\x03\x01") -> bytes:
    return bytes([content_type]) + version + struct.pack("!H", len(payload)) + payload


def vec(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size, "big") + data


def hello_message(extensions: bytes | None, suites: bytes = b"\x13\x01") -> bytes:
    body = b"\x03\x03" + bytes(32) + vec(1, b"") + vec(2, suites) + vec(1, b"\x00")
    if extensions is not None:
        body += vec(2, extensions)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([t]) + vec(2, n) for t, n in names)
    return struct.pack("!H", 0) + vec(2, vec(2, entries))


def oversized_hello() -> bytes:
    """A 64 KiB ClientHello (SNI and padding extensions), split into maximal records."""
    sni = sni_extension((0, b"a" * 20000))
    padding = struct.pack("!H", 21) + vec(2, bytes(65535 - len(sni) - 4))
    message = hello_message(sni + padding)
    assert len(message) >= 64 * 1024
    return b"".join(record(message[i : i + 16384]) for i in range(0, len(message), 16384))


def parse_all(data: bytes, chunk: int | None = None) -> object:
    parser = ClientHelloParser()
    if chunk is None:
        return parser.feed(data)
    result: object = NEED_MORE
    for i in range(0, len(data), chunk):
        result = parser.feed(data[i : i + chunk])
    return result


def test_reads_server_name_and_alpn_from_openssl_hello():
    """What a real client sends is understood: its SNI and its ALPN list, in order."""
    data = openssl_hello("billing.default.dc2.internal.td.consul", ["h2", "http/1.1"])
    result = parse_all(data)
    assert isinstance(result, ClientHello)
    assert result.server_name == b"billing.default.dc2.internal.td.consul"
    assert result.alpn == (b"h2", b"http/1.1")
    assert result.length == len(data)


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 100])
def test_bytes_arriving_in_pieces_give_need_more_then_the_same_answer(chunk):
    """Incremental: every prefix answers NEED_MORE (a normal return), the whole the hello."""
    data = openssl_hello("a.example")
    parser = ClientHelloParser()
    answers = [parser.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    assert all(a is NEED_MORE for a in answers[:-1])
    assert isinstance(answers[-1], ClientHello) and answers[-1].server_name == b"a.example"


def test_hello_fragmented_over_several_records_is_reassembled():
    message = hello_message(sni_extension((0, b"x.test")))
    data = b"".join(record(message[i : i + 10]) for i in range(0, len(message), 10))
    result = parse_all(data)
    assert isinstance(result, ClientHello) and result.server_name == b"x.test"


def test_no_sni_is_a_hello_without_a_name():
    """Missing SNI is not malformed: the caller decides what to do without one."""
    assert parse_all(openssl_hello(None)) == ClientHello(None, (), len(openssl_hello(None)))
    bare = record(hello_message(None))
    assert parse_all(bare) == ClientHello(None, (), len(bare))


def test_records_after_the_hello_belong_to_the_stream():
    """A TLS 1.3 client may send change_cipher_spec or 0-RTT right after its hello."""
    hello = openssl_hello("a.test")
    result = parse_all(hello + record(b"\x01", content_type=20))
    assert isinstance(result, ClientHello) and result.length == len(hello)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not_tls"),
        (b"\x16\x02\x00\x00\x05hello", "not_tls"),  # not version 3
        (record(b"\x02\x00\x00\x00"), "not_client_hello"),  # a ServerHello
        (record(b"\x01\x01\x00\x00"), "too_large"),  # announces 64 KiB
        (record(b""), "malformed"),  # zero-length handshake record
        (b"\x16\x03\x01\x40\x01" + bytes(10), "malformed"),  # record over 2^14
        (record(hello_message(b"\x00")), "malformed"),  # extensions cut short
        (record(hello_message(sni_extension())), "malformed"),  # empty name list
        (record(hello_message(sni_extension((0, b"")))), "malformed"),
        (record(hello_message(sni_extension((0, b"a"), (0, b"b")))), "malformed"),
        (record(hello_message(sni_extension((1, b"a")))), "malformed"),  # no host_name
        (record(hello_message(sni_extension((0, b"a")) * 2)), "malformed"),  # twice
        (record(hello_message(None, suites=b"\x13")), "malformed"),  # odd suites
        (record(hello_message(None) + b"\x01\x00\x00\x00"), "malformed"),  # glued message
        (record(b"\x01\x00\x00\x05") + record(b"x", content_type=23), "malformed"),
    ],
)
def test_bad_input_is_an_error_value_with_a_reason(data, reason):
    result = parse_all(data)
    assert isinstance(result, HelloError), result
    assert result.reason == reason, result


def test_a_64_kib_hello_is_refused_after_its_header():
    """The announced length decides; the parser does not wait for (or keep) 64 KiB."""
    data = oversized_hello()
    parser = ClientHelloParser()
    result = parser.feed(data[:16389])
    assert isinstance(result, HelloError) and result.reason == "too_large"
    assert parser.feed(data[16389:]) is result  # the answer never changes


def test_tiny_records_cannot_make_it_examine_more_than_max_bytes():
    message = hello_message(sni_extension((0, b"a" * 3000)))
    data = b"".join(record(message[i : i + 1]) for i in range(len(message)))
    parser = ClientHelloParser(max_length=4096)
    result: object = NEED_MORE
    for i in range(0, len(data), 4096):
        result = parser.feed(data[i : i + 4096])
    assert isinstance(result, HelloError) and result.reason == "too_large"
    assert parser.examined <= parser.max_bytes


def test_eof_inside_the_hello_is_truncated_and_after_it_changes_nothing():
    data = openssl_hello("a.test")
    parser = ClientHelloParser()
    assert parser.feed(data[:-3]) is NEED_MORE
    truncated = parser.eof()
    assert isinstance(truncated, HelloError) and truncated.reason == "truncated"
    done = ClientHelloParser()
    hello = done.feed(data)
    assert done.eof() is hello


def _python_calls(fn) -> int:
    """Function calls (Python and C) made while ``fn`` runs."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_a_real_hello_is_read_with_offsets_not_a_copy_per_field():
    """Issue 28: the parser runs once per terminated handshake, so reading a real hello
    (SNI, ALPN, a dozen extensions) costs a few dozen calls (the body is read with
    offsets into one buffer), not a reader object and a bytes copy per field (217)."""
    hello = openssl_hello("billing.default.dc1.internal.td.consul", ["h2", "http/1.1"])
    result: list[object] = []
    calls = _python_calls(lambda: result.append(ClientHelloParser().feed(hello)))
    assert isinstance(result[0], ClientHello)
    assert result[0].server_name == b"billing.default.dc1.internal.td.consul"
    assert calls <= 80, calls


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=12),
    st.integers(min_value=16, max_value=2048),
)
def test_fuzz_arbitrary_bytes_never_raise_and_stay_within_the_bound(chunks, max_length):
    parser = ClientHelloParser(max_length=max_length)
    for chunk in chunks:
        result = parser.feed(chunk)
        assert parser.examined <= parser.max_bytes
        assert len(parser._pending) + len(parser._message) <= parser.max_bytes
        assert result is NEED_MORE or isinstance(result, ClientHello | HelloError)
        if isinstance(result, HelloError):
            assert result.reason in HELLO_ERROR_REASONS
    assert isinstance(parser.eof(), ClientHello | HelloError)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_hellos_never_raise(data):
    """Flipping, cutting and splicing bytes of a real hello: always a value, never more read."""
    base = bytearray(openssl_hello("svc.default.dc1.internal.td.consul", ["h2"]))
    for _ in range(data.draw(st.integers(0, 6))):
        pos = data.draw(st.integers(0, len(base) - 1))
        base[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    stream = bytes(base[:cut]) + data.draw(st.binary(max_size=64))
    step = data.draw(st.integers(1, 64))
    parser = ClientHelloParser(max_length=1024)
    for i in range(0, len(stream), step):
        result = parser.feed(stream[i : i + step])
        assert parser.examined <= parser.max_bytes
        assert result is NEED_MORE or isinstance(result, ClientHello | HelloError)
    final = parser.eof()
    assert isinstance(final, ClientHello | HelloError)
