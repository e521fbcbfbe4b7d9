"""Edges of the terminating site that a mutation audit found unproven: a mesh gateway's
identity presented as a client, and the early-data limit while a decision is pending.

Real TLS over loopback through the in-process gateway (tests/harness.py); the pending
decision comes from a drop-in authorization engine that answers when the test says.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest_twisted
from OpenSSL import SSL
from twisted.internet import reactor

from gwcore.net.splice import State
from gwcore.net.terminator import MAX_EARLY_BYTES
from gwcore.policy.model import Decision, Verdict
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    handshake_transcript,
    hello,
    in_thread,
    intentions,
    read_all,
    registration,
    request,
    sni_for,
    tls_connect,
    write_json,
)

HELD = """
from twisted.internet.defer import Deferred


class Held:
    '''Answers every request later: the test fires the Deferreds in ``pending``.'''

    name = "held"
    policy_version = "1"

    def __init__(self):
        self.pending = []

    def start(self, changed):
        return None

    def stop(self):
        return None

    def authorize(self, request):
        d = Deferred()
        self.pending.append(d)
        return d


def tgw_authorization_engines(site):
    return [Held()]
"""


def serve_billing(gateway: Any, port: int) -> None:
    write_json(gateway.catalog / "gateway.json", gateway_entry("billing"))
    write_json(gateway.catalog / "registrations.json", [registration("billing", port)])
    write_json(gateway.catalog / "intentions.json", [intentions("billing", ("*", "allow"))])


@pytest_twisted.ensureDeferred
async def test_a_mesh_gateway_identity_is_refused_as_a_client(gateway, upstreams):
    """A certificate from the mesh CA naming ``spiffe://<td>/gateway/mesh/dc/dc1`` (a
    mesh gateway, not a service) is refused after the handshake as ``not_a_service``,
    even though ``* => billing allow`` would admit any service; nothing is forwarded."""
    up = upstreams(hello(b"billing"))
    serve_billing(gateway, up.port)
    await gateway.start()
    assert gateway.ca is not None
    mesh_gw = f"spiffe://{gateway.ca.trust_domain}/gateway/mesh/dc/dc1"
    files = gateway.client_files("mesh-gw", gateway.ca.leaf_with_uris([mesh_gw]))

    def attempt() -> bytes:
        try:
            return request(gateway.port, sni_for("billing"), files)
        except (HandshakeRefusedError, OSError):  # a reset after the handshake refuses too
            return b""

    assert await in_thread(attempt) == b""
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="not_a_service") == 1
    )
    assert up.accepted == 0
    # The same gateway serves a service identity: the refusal is about the identity kind.
    web = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), web) == b"billing"
    assert up.accepted == 1


@pytest_twisted.ensureDeferred
async def test_early_data_is_paused_then_refused_beyond_the_limit(gateway, upstreams, tmp_path):
    """While the decision is pending the client's socket is not read (paused); plaintext
    that still reaches the connection is kept up to MAX_EARLY_BYTES (256 KiB), and more
    refuses the connection as ``early_data_overflow`` without connecting upstream.

    One paused read cannot carry more than the limit (READ_SIZE is 256 KiB of
    ciphertext), so the test resumes the transport by hand: the limit is the driver's
    own bound whatever its transport delivers."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "held.py").write_text(HELD)
    gateway.plugins = ["file_catalog", "builtin_ca", "held"]
    up = upstreams(hello(b"billing"))
    serve_billing(gateway, up.port)
    await gateway.start()
    (held,) = [e for e in gateway.site.engines if e.name == "held"]
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    try:
        await gateway.wait_for(lambda: len(held.pending) == 1)
        (conn,) = gateway.site.active
        assert conn.transport not in reactor.getReaders()  # paused while deciding

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        payload = b"x" * (MAX_EARLY_BYTES + 64 * 1024)
        sending = in_thread(_send_ignoring_reset, sock, payload)
        conn.transport.resumeProducing()  # a transport that delivers regardless
        await gateway.wait_for(
            lambda: (
                gateway.metric("tgw_downstream_rejected_total", reason="early_data_overflow") == 1
            ),
            timeout=10,
        )
        await sending
        assert not gateway.site.active
        assert await in_thread(_read_until_closed, sock) == b""
    finally:
        sock.close()
    for d in held.pending:  # a late answer to a closed connection changes nothing
        d.callback(Decision(Verdict.ALLOW, "held", "too late"))
    assert conn.state is State.CLOSED and conn.decision is None  # no upstream dialled
    assert up.accepted == 0


@pytest_twisted.ensureDeferred
async def test_early_data_within_the_limit_is_sent_first(gateway, upstreams, tmp_path):
    """Plaintext the client sends while the decision is pending (well under the limit)
    reaches the service first, in order, once the decision allows."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "held.py").write_text(HELD)
    gateway.plugins = ["file_catalog", "builtin_ca", "held"]
    up = upstreams()  # echo
    serve_billing(gateway, up.port)
    await gateway.start()
    (held,) = [e for e in gateway.site.engines if e.name == "held"]
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    try:
        await in_thread(sock.sendall, b"early-")
        await gateway.wait_for(lambda: len(held.pending) == 1)
        held.pending[0].callback(Decision(Verdict.ALLOW, "held", "allowed"))
        await in_thread(sock.sendall, b"late")
        got = b""
        while len(got) < len(b"early-late"):
            chunk = await in_thread(sock.recv, 100)
            assert chunk, got
            got += chunk
        assert got == b"early-late"
    finally:
        sock.close()
    assert up.accepted == 1


def _send_ignoring_reset(sock: Any, payload: bytes) -> None:
    with contextlib.suppress(OSError):  # the gateway closed the connection: the refusal
        sock.sendall(payload)


def _read_until_closed(sock: Any) -> bytes:
    try:
        return read_all(sock)
    except OSError:
        return b""


OBSERVER = """
import json
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")


class Observer:
    name = "observer"

    def tgw_tls_clienthello(self, event):
        if event.sni and event.sni.startswith("ldap."):
            event.veto("no ldap here", "observer")

    def tgw_handshake_done(self, event):
        OUT.write_text(json.dumps({"sni": event.sni, "cipher": event.cipher,
                                   "tls_version": event.tls_version}))

    def tgw_authorized(self, event):
        if event.identity.name == "api":
            event.veto("api is vetoed after the engines", "observer")


addons = [Observer()]
"""


def with_observer(gateway: Any, tmp_path: Any) -> Path:
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "observer.py").write_text(OBSERVER)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "observer"]
    return tmp_path / "addons" / "observer.json"


@pytest_twisted.ensureDeferred
async def test_addons_see_the_sni_and_cipher_and_can_veto_an_allow(gateway, upstreams, tmp_path):
    """tgw_handshake_done carries the routed SNI and the negotiated cipher; a veto in
    tgw_authorized turns the engines' allow into a deny by ``addon:<name>``."""
    seen = with_observer(gateway, tmp_path)
    up = upstreams(hello(b"billing"))
    serve_billing(gateway, up.port)
    await gateway.start()
    web = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), web) == b"billing"
    event = json.loads(seen.read_text())
    assert event["sni"] == sni_for("billing")
    assert event["cipher"].startswith("TLS_") and event["tls_version"] == "TLSv1.3"

    api = gateway.client_files("api")
    assert await in_thread(request, gateway.port, sni_for("billing"), api) == b""
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    vetoed = gateway.access_records()[1]
    assert vetoed["decision"] == "deny" and vetoed["engine"] == "addon:observer"
    assert vetoed["close_cause"] == "denied"
    assert up.accepted == 1


@pytest_twisted.ensureDeferred
async def test_a_clienthello_veto_sends_no_certificate(gateway, upstreams, tmp_path):
    """A veto in tgw_tls_clienthello aborts the handshake before any certificate is sent
    (the client's transcript has no Certificate), counted as ``addon_veto``, even for a
    routed service with a leaf."""
    with_observer(gateway, tmp_path)
    up = upstreams(hello(b"ldap"))
    write_json(gateway.catalog / "gateway.json", gateway_entry("ldap"))
    write_json(gateway.catalog / "registrations.json", [registration("ldap", up.port)])
    write_json(gateway.catalog / "intentions.json", [intentions("ldap", ("*", "allow"))])
    await gateway.start()
    refused = await in_thread(
        handshake_transcript, gateway.port, sni_for("ldap"), gateway.client_files("web")
    )
    assert refused.error is not None and not refused.certificate_received, refused.states
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="addon_veto") == 1
    )
    assert up.accepted == 0


@pytest_twisted.ensureDeferred
async def test_an_invalid_sni_is_counted_apart_from_an_unknown_one(gateway, upstreams):
    """A server name that is not a valid DNS name (an empty label) is ``invalid_sni``,
    not ``unknown_sni``, and gets no certificate."""
    up = upstreams()
    serve_billing(gateway, up.port)
    await gateway.start()
    refused = await in_thread(
        handshake_transcript, gateway.port, "billing..example", gateway.client_files("web")
    )
    assert refused.error is not None and not refused.certificate_received, refused.states
    await gateway.wait_for(lambda: gateway.metric("tgw_no_route_total", reason="invalid_sni") == 1)
    assert gateway.metric("tgw_no_route_total", reason="unknown_sni") == 0


@pytest_twisted.ensureDeferred
async def test_a_completed_handshake_cancels_its_deadline(gateway, upstreams):
    """Once the handshake is done its ``handshake_timeout`` timer is cancelled, not left
    to fire later on every connection."""
    up = upstreams()  # echo: the connection stays open
    serve_billing(gateway, up.port)
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    try:
        await in_thread(sock.sendall, b"hi")
        assert await in_thread(sock.recv, 10) == b"hi"
        (conn,) = gateway.site.active
        timers = [
            c
            for c in reactor.getDelayedCalls()
            if getattr(c.func, "__self__", None) is conn and c.active()
        ]
        assert timers == []
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_route_without_a_leaf_sends_no_certificate(gateway, upstreams):
    """billing and api are routed but file_certs has a leaf for billing only: api's SNI
    is refused as ``no_certificate`` before any certificate is sent; billing is served."""
    up = upstreams(hello(b"served"))
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = """
[sites.main.file_certs]
roots = ["pki/roots.pem"]
poll_interval = "1s"
[sites.main.file_certs.leaves.billing]
cert = "pki/billing.pem"
key = "pki/billing-key.pem"
"""
    write_json(gateway.catalog / "gateway.json", gateway_entry("billing", "api"))
    write_json(
        gateway.catalog / "registrations.json",
        [registration("billing", up.port), registration("api", up.port)],
    )
    write_json(
        gateway.catalog / "intentions.json",
        [intentions("billing", ("*", "allow")), intentions("api", ("*", "allow"))],
    )
    ca = MeshCA(TRUST_DOMAIN)
    ca.write(gateway.root / "pki", "billing", ca.leaf("billing"))
    ca.write_root(gateway.root / "pki" / "roots.pem")
    await gateway.start()
    assert gateway.ca is not None
    gateway.ca = ca  # clients get leaves from the CA file_certs trusts
    files = gateway.client_files("web")
    refused = await in_thread(handshake_transcript, gateway.port, sni_for("api"), files)
    assert refused.error is not None and not refused.certificate_received, refused.states
    await gateway.wait_for(
        lambda: gateway.metric("tgw_no_route_total", reason="no_certificate") == 1
    )
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"served"
    assert up.accepted == 1


def tampered_handshake(port: int, sni: str, files: Any, corrupt: str) -> None:
    """A pyOpenSSL client on memory BIOs whose last flight is altered on the wire:
    ``"finished"`` flips the last byte of its Finished record (after its certificate,
    which verifies); ``"after_finished"`` sends the flight intact, followed in the same
    segment by an application-data record with its last byte flipped."""
    cert, key, _root = files
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(sni.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(50):  # bounded: a handshake takes a few rounds
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                with contextlib.suppress(SSL.WantReadError):
                    sock.sendall(conn.bio_read(1 << 16))
                conn.bio_write(sock.recv(1 << 16))
        else:
            raise AssertionError("the client's handshake did not finish")
        flight = conn.bio_read(1 << 16)
        if corrupt == "finished":
            flight = flight[:-1] + bytes([flight[-1] ^ 1])
        else:
            conn.send(b"early")
            record = conn.bio_read(1 << 16)
            flight += record[:-1] + bytes([record[-1] ^ 1])
        sock.sendall(flight)
        with contextlib.suppress(OSError):
            while sock.recv(1 << 16):
                pass


@pytest_twisted.ensureDeferred
async def test_a_corrupt_finished_after_a_good_certificate_is_a_protocol_error(gateway, upstreams):
    """The client's certificate verified, then its Finished fails the record MAC: the
    refusal is counted as ``protocol_error``, not blamed on the certificate."""
    up = upstreams()
    serve_billing(gateway, up.port)
    await gateway.start()
    files = gateway.client_files("web")
    await in_thread(tampered_handshake, gateway.port, sni_for("billing"), files, "finished")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="protocol_error") == 1
    )
    assert gateway.metric("tgw_tls_handshake_errors_total", reason="bad_client_cert") == 0
    assert up.accepted == 0


@pytest_twisted.ensureDeferred
async def test_a_connection_broken_with_its_first_bytes_is_never_authorized(
    gateway, upstreams, tmp_path
):
    """A corrupt record right behind the client's Finished closes the connection while
    its handshake completes: no engine is asked about it and nothing is forwarded."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "held.py").write_text(HELD)
    gateway.plugins = ["file_catalog", "builtin_ca", "held"]
    up = upstreams()
    serve_billing(gateway, up.port)
    await gateway.start()
    (held,) = [e for e in gateway.site.engines if e.name == "held"]
    files = gateway.client_files("web")
    await in_thread(tampered_handshake, gateway.port, sni_for("billing"), files, "after_finished")
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "tls_error"
    assert held.pending == []
    assert up.accepted == 0
