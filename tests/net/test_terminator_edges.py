"""Edges of the terminating site that a mutation audit found unproven: a mesh gateway's
identity presented as a client, and the early-data limit while a decision is pending.

Real TLS over loopback through the in-process gateway (tests/harness.py); the pending
decision comes from a drop-in authorization engine that answers when the test says.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from gwcore.net.terminator import MAX_EARLY_BYTES
from gwcore.policy.model import Decision, Verdict
from tests.harness import (
    gateway_entry,
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
        except OSError:  # a reset after the handshake is a refusal too (ssl errors included)
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
    assert up.accepted == 0


@pytest_twisted.ensureDeferred
async def test_early_data_within_the_limit_is_sent_first(gateway, upstreams, tmp_path):
    """Plaintext sent while the decision is pending (well under the limit) is kept and
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
