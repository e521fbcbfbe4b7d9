"""gwcore.net.client_verify: OpenSSL verifies the client's chain and Python hears of
refusals only; the access record still names the certificate a client presented,
refused in the chain check or verified and then abandoned mid-handshake."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import pytest_twisted

from tests.harness import (
    TRUST_DOMAIN,
    client_context,
    gateway_entry,
    in_thread,
    intentions,
    read_all,
    registration,
    sni_for,
    write_json,
)

_APPLICATION_DATA = 23  # TLS 1.3 sends every handshake message after the hellos so


def _records(data: bytes) -> list[bytes]:
    out = []
    while data:
        length = 5 + int.from_bytes(data[3:5], "big")
        out.append(data[:length])
        data = data[length:]
    return out


def _certificate_then_fin(port: int, sni: str, files) -> bytes:
    """A TLS 1.3 client that sends its Certificate (its first encrypted record of the
    second flight) but not CertificateVerify and Finished, then closes its side."""
    cert, key, root = files
    ctx = client_context(cert, key, root)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                assert data, "the gateway closed during its own flight"
                incoming.write(data)
        second_flight = _records(outgoing.read())
        kinds = [record[0] for record in second_flight]
        cut = kinds.index(_APPLICATION_DATA) + 1  # up to and including the Certificate
        assert cut < len(second_flight), kinds  # CertificateVerify and Finished held back
        sock.sendall(b"".join(second_flight[:cut]))
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


@pytest_twisted.ensureDeferred
async def test_a_verified_certificate_of_an_unfinished_handshake_is_described(gateway, upstreams):
    """A client whose chain verified but who left before finishing its handshake is a
    ``handshake:client_closed``; its record names the certificate it presented, read
    from OpenSSL's session as the connection ends (no Python ran for the chain check)."""
    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    leaf = gateway.ca.leaf("web")
    files = gateway.client_files("web", leaf)
    await in_thread(_certificate_then_fin, gateway.port, sni_for("billing"), files)
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["close_cause"] == "handshake:client_closed"
    assert record["peer_certificate_serial"] == format(leaf.certificate.serial_number, "x")
    assert record["peer_certificate_uri"] == f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
    assert up.accepted == 0


@pytest_twisted.ensureDeferred
async def test_a_leaf_refused_in_the_chain_check_is_described_and_counted(gateway, upstreams):
    """An expired leaf fails OpenSSL's check at depth 0: the callback hears of it, the
    handshake error is counted as ``expired_cert`` and the record names that leaf."""
    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    expired = gateway.ca.leaf("web", now=time.time() - 30 * 86400, valid_for=3600)
    files = gateway.client_files("web", expired)

    def attempt() -> None:
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # refused: expected
            _certificate_then_fin(gateway.port, sni_for("billing"), files)

    await in_thread(attempt)
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="expired_cert") == 1
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["close_cause"] == "handshake:expired_cert"
    assert record["peer_certificate_serial"] == format(expired.certificate.serial_number, "x")


_NO_CURRENT_CERT = """
from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from gwcore.net.client_verify import ClientVerifier
calls = []
verifier = ClientVerifier(lambda conn, cert, err, depth, ok: calls.append((cert, err)) or False)
conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
store, store_ctx = lib.X509_STORE_new(), lib.X509_STORE_CTX_new()
assert lib.X509_STORE_CTX_init(store_ctx, store, ffi.NULL, ffi.NULL) == 1
lib.X509_STORE_CTX_set_error(store_ctx, 43)  # X509_V_ERR_NO_EXPLICIT_POLICY: no current cert
# This store context belongs to no handshake: map its (absent) SSL to the connection.
SSL.Connection._reverse_mapping[
    lib.X509_STORE_CTX_get_ex_data(store_ctx, lib.SSL_get_ex_data_X509_STORE_CTX_idx())
] = conn
print(verifier._verify(0, store_ctx), calls)
"""


def test_a_refusal_with_no_current_certificate_is_heard_without_one() -> None:
    """OpenSSL reports some refusals (a policy check's) with no current certificate
    (``X509_STORE_CTX_get_current_cert`` is NULL): the callback hands the site the
    error with ``cert=None`` and refuses, instead of taking a reference on NULL and
    crashing the process (run in a child, so a crash is a failure, not the suite's)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _NO_CURRENT_CERT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0 [(None, 43)]"
