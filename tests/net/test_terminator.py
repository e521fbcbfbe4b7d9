"""The terminating site end to end: real TLS (Python's ssl and pyOpenSSL clients) over
real sockets on 127.0.0.1, through an in-process gateway, to threaded upstreams."""

from __future__ import annotations

import contextlib
import random
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from OpenSSL import SSL

from gwcore.net.splice import SplicedClient
from tests.harness import (
    HandshakeRefusedError,
    Upstream,
    echo,
    free_port,
    gateway_entry,
    handshake_transcript,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    registration,
    request,
    sha256,
    sleep,
    sni_for,
    tls_connect,
    write_json,
)

MiB = 1 << 20


def setup_catalog(
    gateway, services: dict[str, list[int]], rules: list[dict] | None = None, extra=()
) -> None:
    write_json(gateway.catalog / "gateway.json", gateway_entry(*services, *extra))
    regs = [registration(name, port) for name, ports in services.items() for port in ports]
    write_json(gateway.catalog / "registrations.json", regs)
    write_json(
        gateway.catalog / "intentions.json",
        rules if rules is not None else [intentions(s, ("*", "allow")) for s in services],
    )


def exchange(
    sock: ssl.SSLSocket, outgoing: bytes, recv_limit: int | None = None, timeout: float = 60
) -> bytes:
    """Send ``outgoing`` while reading, on one thread (an SSLSocket is not thread-safe).

    Reads until EOF, or until ``recv_limit`` bytes when given.
    """
    sock.setblocking(False)
    sent, received, eof = 0, bytearray(), False
    deadline = time.monotonic() + timeout
    while (not eof and (recv_limit is None or len(received) < recv_limit)) or sent < len(outgoing):
        if time.monotonic() > deadline:
            raise TimeoutError(f"sent {sent}, received {len(received)}")
        wants_write = sent < len(outgoing)
        wait = 0 if sock.pending() else 1.0
        readable, writable, _ = select.select([sock], [sock] if wants_write else [], [], wait)
        if writable:
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent += sock.send(outgoing[sent : sent + 65536])
        if (readable or sock.pending()) and not eof:
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except ssl.SSLZeroReturnError:
                eof = True
                continue
            if not chunk:
                eof = True
            received += chunk
    sock.setblocking(True)
    return bytes(received)


def bulk_upstream(data_down: bytes, expect_up: int, closes_first: bool):
    """Upstream that sends ``data_down`` while reading; records the hash of what it read."""

    def handle(sock: socket.socket, up: Upstream) -> None:
        received = bytearray()

        def reader() -> None:
            while (closes_first and len(received) < expect_up) or not closes_first:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        sock.sendall(data_down)
        t.join(60)
        up.results.append((len(received), sha256(bytes(received))))
        if closes_first:
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)  # wait for the gateway to close its side

    return handle


@pytest.mark.parametrize(
    "upstream_closes_first", [True, False], ids=["upstream-closes", "client-closes"]
)
@pytest_twisted.ensureDeferred
async def test_ten_mib_each_way_arrive_byte_identical(gateway, upstreams, upstream_closes_first):
    """10 MiB each way cross the gateway unchanged, whichever side closes first."""
    rng = random.Random(7)
    data_up, data_down = rng.randbytes(10 * MiB), rng.randbytes(10 * MiB)
    up = upstreams(bulk_upstream(data_down, len(data_up), upstream_closes_first))
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    files = gateway.client_files("web")

    def client() -> bytes:
        cert, key, root = files
        sock = tls_connect(gateway.port, sni_for("billing"), cert, key, root)
        if upstream_closes_first:
            got = exchange(sock, data_up)  # until the gateway passes the upstream's close
        else:
            got = exchange(sock, data_up, recv_limit=len(data_down))
            raw = sock
            raw.shutdown(socket.SHUT_WR)  # the client is done first (drops the TLS layer)
            raw.settimeout(30)
            while raw.recv(4096):  # only the gateway's close_notify record, then EOF
                pass
        sock.close()
        return got

    got = await in_thread(client)
    assert sha256(got) == sha256(data_down)
    await gateway.wait_for(lambda: bool(up.results))
    assert up.results == [(len(data_up), sha256(data_up))]
    assert not up.errors
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["bytes_upstream"] == len(data_up)
    assert record["bytes_downstream"] == len(data_down)
    assert record["decision"] == "allow"
    assert gateway.metric("tgw_bytes_total", service="billing", direction="upstream") == len(
        data_up
    )


@pytest_twisted.ensureDeferred
async def test_client_close_notify_half_closes_and_the_reply_still_arrives(gateway, upstreams):
    """A TLS close_notify from the client half-closes the upstream; its reply still flows back."""
    up = upstreams()  # echo until EOF, then close
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def client() -> bytes:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.load_verify_locations(str(root))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
        raw = socket.create_connection(("127.0.0.1", gateway.port))
        # Blocking for pyOpenSSL, with a kernel receive timeout so a bug cannot hang the test.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(sni_for("billing").encode())
        conn.set_connect_state()
        conn.do_handshake()
        payload = b"x" * 200_000
        conn.sendall(payload)
        conn.shutdown()  # close_notify: "I am done writing", keep reading
        got = bytearray()
        deadline = time.monotonic() + 20
        while True:
            try:
                got += conn.recv(65536)
            except SSL.WantReadError:  # a session ticket record or the receive timeout
                if time.monotonic() > deadline:
                    raise
                continue
            except SSL.ZeroReturnError:
                break
        raw.close()
        return bytes(got)

    assert await in_thread(client) == b"x" * 200_000


@pytest_twisted.ensureDeferred
async def test_without_an_access_log_connections_are_still_measured(
    gateway, upstreams, monkeypatch
):
    """With ``access_log = ""`` no record is built or written, yet a finished connection
    is still counted: its duration, its bytes and its destination in /metrics."""
    built = []
    original = SplicedClient.access_record
    monkeypatch.setattr(
        SplicedClient, "access_record", lambda self: built.append(1) or original(self)
    )
    gateway.access_log = ""
    up = upstreams(hello(b"measured"))
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"measured"
    labels = {"site": "main", "service": "billing"}
    await gateway.wait_for(
        lambda: gateway.metric("tgw_connection_duration_seconds_count", **labels) == 1
    )
    assert gateway.metric("tgw_downstream_connections_total", **labels) == 1
    assert gateway.metric("tgw_bytes_total", direction="downstream", **labels) == len(b"measured")
    assert not (gateway.root / "access.log").exists()
    assert built == []  # nobody would read it


@pytest.mark.parametrize(
    "sni", ["unknown.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul", None]
)
@pytest_twisted.ensureDeferred
async def test_unknown_or_missing_sni_gets_no_certificate(gateway, upstreams, sni):
    """Unknown and missing SNI abort the handshake before any certificate is sent, counted.

    The client records each handshake message it parsed (pyOpenSSL's info callback);
    the same client on billing's SNI does see the Certificate, so the check can fail."""
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    with pytest.raises(HandshakeRefusedError):
        await in_thread(tls_connect, gateway.port, sni, *files)
    refused = await in_thread(handshake_transcript, gateway.port, sni, files)
    assert refused.error is not None
    assert not refused.certificate_received, refused.states
    reason = "unknown_sni" if sni else "missing_sni"
    await gateway.wait_for(lambda: gateway.metric("tgw_no_route_total", reason=reason) == 2)
    assert gateway.metric("tgw_tls_handshake_errors_total", reason=reason) == 2
    assert up.accepted == 0
    served = await in_thread(handshake_transcript, gateway.port, sni_for("billing"), files)
    assert served.error is None and served.certificate_received, served.states


def _bad_client(gateway, kind: str):
    from gwcore.testing import MeshCA

    ca = gateway.ca
    td = ca.trust_domain
    web = f"spiffe://{td}/ns/default/dc/dc1/svc/web"
    if kind == "no_client_cert":
        _, _, root = gateway.client_files("web")
        return None, None, root
    if kind == "untrusted_ca":
        return gateway.client_files("web", MeshCA(td).leaf("web"))
    if kind == "expired_cert":
        return gateway.client_files(
            "web", ca.leaf("web", now=time.time() - 30 * 86400, valid_for=3600)
        )
    if kind == "multiple_uri_sans":
        return gateway.client_files("web", ca.leaf_with_uris([web, web.replace("/web", "/api")]))
    if kind == "no_uri_san":
        return gateway.client_files("web", ca.leaf_with_uris([]))
    if kind == "untrusted_domain":
        return gateway.client_files("web", ca.leaf_with_uris([web.replace(td, "evil.consul")]))
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "no_client_cert",
        "untrusted_ca",
        "expired_cert",
        "multiple_uri_sans",
        "no_uri_san",
        "untrusted_domain",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_client_certificates_are_refused_and_counted(gateway, upstreams, kind):
    """Each kind of bad client identity is refused, counted by reason, and never forwarded."""
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = _bad_client(gateway, kind)

    def attempt() -> bytes:
        try:
            return request(gateway.port, sni_for("billing"), (cert, key, root))
        except (HandshakeRefusedError, ssl.SSLError, ConnectionError):
            return b"refused"

    assert await in_thread(attempt) in (b"refused", b"")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason=kind) == 1
    )
    assert up.accepted == 0
    await gateway.wait_for(lambda: gateway.metric("tgw_downstream_connections_active") == 0)


@pytest_twisted.ensureDeferred
async def test_intentions_exact_deny_beats_wildcard_allow(gateway, upstreams):
    """web => billing deny beside * => billing allow: web refused (no upstream), api served."""
    up = upstreams()
    rules = [intentions("billing", ("web", "deny"), ("*", "allow"))]
    setup_catalog(gateway, {"billing": [up.port]}, rules)
    await gateway.start()
    web, api = gateway.client_files("web"), gateway.client_files("api")

    assert await in_thread(request, gateway.port, sni_for("billing"), web) == b""
    assert up.accepted == 0

    # The client verifies it reached the real destination's identity before sending.
    def api_call() -> tuple[bytes, list[str]]:
        cert, key, root = api
        with tls_connect(gateway.port, sni_for("billing"), cert, key, root) as sock:
            uris = peer_uris(sock)
            sock.sendall(b"hello")
            return sock.recv(100), uris

    got, uris = await in_thread(api_call)
    assert got == b"hello"
    assert uris == [f"spiffe://{gateway.ca.trust_domain}/ns/default/dc/dc1/svc/billing"]
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    denied = [r for r in gateway.access_records() if r["decision"] == "deny"]
    assert len(denied) == 1 and denied[0]["source"].endswith("/svc/web")
    assert "web" in denied[0]["reason"] and denied[0]["engine"] == "intentions"
    assert denied[0]["close_cause"] == "denied" and denied[0]["endpoint"] is None
    assert (
        gateway.metric(
            "tgw_authz_decisions_total", service="billing", engine="intentions", decision="deny"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_default_policy_applies_when_no_intention_matches(gateway, upstreams):
    """No matching intention: default_policy deny refuses, and the reason says so."""
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]}, [intentions("billing", ("api", "allow"))])
    await gateway.start()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b""
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["decision"] == "deny" and record["engine"] == "default"
    assert "default_policy=deny" in record["reason"]


@pytest_twisted.ensureDeferred
async def test_refused_endpoint_is_skipped_for_the_next(gateway, upstreams):
    """One endpoint refuses, the other accepts: every client is served, failures counted."""
    up = upstreams(hello(b"served"))
    dead = free_port()
    setup_catalog(gateway, {"billing": [dead, up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(4):
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"served"
    assert (
        gateway.metric("tgw_upstream_connect_failures_total", service="billing", reason="refused")
        >= 1
    )
    records = gateway.access_records()
    assert any(r["connect_attempts"] == 2 for r in records)


@pytest_twisted.ensureDeferred
async def test_all_endpoints_down_closes_the_client_promptly(gateway):
    """No endpoint reachable: the client is closed (not left hanging) and it is counted."""
    setup_catalog(gateway, {"billing": [free_port(), free_port()]})
    await gateway.start()
    started = time.monotonic()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b""
    )
    assert time.monotonic() - started < 10  # well under the client's own timeout
    assert gateway.metric("tgw_upstream_unavailable_total", service="billing") == 1
    assert (
        gateway.metric("tgw_upstream_connect_failures_total", service="billing", reason="refused")
        == 2
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "upstream_unavailable"


@pytest_twisted.ensureDeferred
async def test_critical_instances_are_not_used(gateway, upstreams):
    """An instance with a critical check receives nothing; the passing one serves."""
    good, bad = upstreams(hello(b"good")), upstreams(hello(b"bad"))
    write_json(gateway.catalog / "gateway.json", gateway_entry("billing"))
    write_json(
        gateway.catalog / "regs.json",
        [registration("billing", good.port), registration("billing", bad.port, status="critical")],
    )
    write_json(gateway.catalog / "intentions.json", intentions("billing", ("*", "allow")))
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(4):
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"good"
    assert bad.accepted == 0


@pytest_twisted.ensureDeferred
async def test_catalog_edit_adds_a_route_while_old_connections_keep_streaming(gateway, upstreams):
    """A destination added by editing the catalog is reachable; an open connection is untouched."""
    billing, payments = upstreams(), upstreams(hello(b"payments here"))
    setup_catalog(gateway, {"billing": [billing.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)

    def roundtrip(data: bytes) -> bytes:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            got += sock.recv(65536)
        return got

    assert await in_thread(roundtrip, b"before") == b"before"
    setup_catalog(gateway, {"billing": [billing.port], "payments": [payments.port]})
    await gateway.wait_for(
        lambda: gateway.site.current()[0].lookup(sni_for("payments")) is not None
    )
    got = await in_thread(request, gateway.port, sni_for("payments"), (cert, key, root))
    assert got == b"payments here"
    assert await in_thread(roundtrip, b"after the edit") == b"after the edit"
    sock.close()


@pytest_twisted.ensureDeferred
async def test_tls_destination_with_unloadable_ca_is_refused_not_sent_in_plaintext(
    gateway, upstreams
):
    """CAFile set but unreadable: refused with a clear reason, never sent in plaintext."""
    up = upstreams()
    extra = [{"Name": "secure", "CAFile": "/nonexistent/ca.pem"}]
    setup_catalog(gateway, {}, [intentions("secure", ("*", "allow"))], extra=extra)
    write_json(gateway.catalog / "registrations.json", [registration("secure", up.port)])
    await gateway.start()
    await gateway.wait_for(lambda: gateway.site.current()[0].lookup(sni_for("secure")) is not None)
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni_for("secure"), files) == b""
    assert up.accepted == 0
    assert (
        gateway.metric("tgw_upstream_tls_errors_total", service="secure", reason="tls_config") == 1
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert "plaintext" in gateway.access_records()[0]["close_detail"]


@pytest_twisted.ensureDeferred
async def test_silent_client_is_dropped_at_the_handshake_deadline(gateway, upstreams):
    """A client that connects and says nothing is closed after handshake_timeout, counted."""
    gateway.site_options["handshake_timeout"] = "0.3s"
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()

    def silent() -> bytes:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
            return s.recv(10)

    assert await in_thread(silent) == b""
    assert gateway.metric("tgw_tls_handshake_errors_total", reason="timeout") == 1


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_after_idle_timeout(gateway, upstreams):
    """No byte in either direction for idle_timeout closes both sides, counted and logged."""
    gateway.site_options["idle_timeout"] = "0.4s"
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def idle_client() -> bytes:
        with tls_connect(gateway.port, sni_for("billing"), cert, key, root) as sock:
            sock.sendall(b"one")
            assert sock.recv(10) == b"one"
            return read_all(sock)  # blocks until the gateway closes

    assert await in_thread(idle_client) == b""
    assert gateway.metric("tgw_idle_timeouts_total", service="billing") == 1
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "idle_timeout"


@pytest_twisted.ensureDeferred
async def test_connections_over_the_limit_are_closed_and_counted(gateway, upstreams):
    """max_connections bounds open connections; the extra one is closed at once, counted."""
    gateway.site_options["max_connections"] = 1
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    held = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)

    def second() -> str:
        try:
            with tls_connect(gateway.port, sni_for("billing"), cert, key, root) as sock:
                sock.sendall(b"x")
                return "served" if sock.recv(1) else "closed"
        except (HandshakeRefusedError, OSError):
            return "closed"

    assert await in_thread(second) == "closed"
    assert gateway.metric("tgw_downstream_rejected_total", reason="overflow") == 1
    held.close()


@pytest_twisted.ensureDeferred
async def test_intention_change_closes_open_connections_it_now_denies(gateway, upstreams):
    """Re-authorization on policy change: a live connection that is now denied is closed."""
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await in_thread(sock.sendall, b"hi")
    assert await in_thread(sock.recv, 10) == b"hi"
    write_json(gateway.catalog / "intentions.json", [intentions("billing", ("web", "deny"))])
    assert await in_thread(read_all, sock) == b""
    sock.close()
    assert gateway.metric("tgw_downstream_rejected_total", reason="policy_revoked") == 1
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "policy_revoked"


ADDON_VETO = """
class VetoApi:
    name = "veto-api"

    def tgw_handshake_done(self, event):
        if event.identity.name == "api":
            event.veto("api may not use this gateway")

addons = [VetoApi()]
"""

ADDON_COUNT = """
from pathlib import Path

LOG = Path(__file__).with_suffix(".events")

def _note(name):
    with LOG.open("a") as f:
        f.write(name + "\\n")

class Counter:
    def tgw_client_connected(self, event):
        _note("client_connected")

    def tgw_tls_clienthello(self, event):
        _note("tls_clienthello")

    def tgw_handshake_done(self, event):
        _note("handshake_done")

    def tgw_authorized(self, event):
        _note("authorized")

    def tgw_upstream_connected(self, event):
        _note("upstream_connected")

    def tgw_connection_closed(self, event):
        _note("closed:" + str(event.record["close_cause"]))

    def tgw_upstream_failed(self, event):
        raise RuntimeError("a broken addon must not break the gateway")

addons = [Counter()]
"""


@pytest_twisted.ensureDeferred
async def test_dropin_addons_veto_and_observe_connections(gateway, upstreams, tmp_path: Path):
    """Drop-in files (nothing installed) load by name: one vetoes api, one counts events."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "veto.py").write_text(ADDON_VETO)
    (tmp_path / "addons" / "count.py").write_text(ADDON_COUNT)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "veto", "count"]
    up = upstreams(hello(b"ok"))
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b"ok"
    )
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("api"))
        == b""
    )
    assert gateway.metric("tgw_downstream_rejected_total", reason="addon_veto") == 1
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    events = (tmp_path / "addons" / "count.events").read_text().split()
    assert events.count("client_connected") == 2
    assert events.count("handshake_done") == 2
    assert events.count("upstream_connected") == 1
    assert "closed:completed" in events and "closed:addon_veto" in events
    assert up.accepted == 1


@pytest_twisted.ensureDeferred
async def test_raising_addon_is_isolated_and_counted(gateway, upstreams, tmp_path: Path):
    """An addon raising in a hook is logged and counted; the connection is still served."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "count.py").write_text(ADDON_COUNT)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "count"]
    up = upstreams(hello(b"ok"))
    setup_catalog(gateway, {"billing": [free_port(), up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(2):
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"ok"
    assert gateway.metric("tgw_addon_errors_total", hook="tgw_upstream_failed") >= 1


@pytest_twisted.ensureDeferred
async def test_stop_drains_then_closes_connections(gateway, upstreams):
    """Stopping the service stops accepting and closes what is left after the drain timeout."""
    gateway.site_options["drain_timeout"] = "0.2s"
    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await in_thread(sock.sendall, b"x")
    assert await in_thread(sock.recv, 1) == b"x"
    await gateway.stop()
    assert await in_thread(read_all, sock) == b""
    sock.close()
    await sleep(0)
    assert gateway.access_records()[0]["close_cause"] == "shutdown"


@pytest_twisted.ensureDeferred
async def test_rotated_leaf_and_added_root_apply_to_new_handshakes_only(gateway, upstreams):
    """file_certs rotation: new handshakes get the new leaf and trust the new root, while
    a connection opened before keeps streaming on the old material."""
    from gwcore.testing import MeshCA

    up = upstreams()
    setup_catalog(gateway, {"billing": [up.port]})
    certs = gateway.root / "certs"
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = f"""
[sites.main.file_certs]
roots = ["{certs / "roots.pem"}"]
poll_interval = "0.05s"
[sites.main.file_certs.leaves]
billing = {{ cert = "{certs / "billing.pem"}", key = "{certs / "billing-key.pem"}" }}
"""
    from gwcore.contract import pki
    from gwcore.plugins.builtin_ca import load_or_create_ca
    from tests.harness import TRUST_DOMAIN

    ca = MeshCA(TRUST_DOMAIN, *load_or_create_ca(gateway.root / "ca", TRUST_DOMAIN))
    first = ca.leaf("billing")
    ca.write(certs, "billing", first)
    ca.write_root(certs / "roots.pem")
    await gateway.start()
    cert, key, root = gateway.client_files("web")

    def serial(sock: ssl.SSLSocket) -> int:
        from cryptography import x509

        return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number

    old = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    assert serial(old) == first.certificate.serial_number

    second = ca.leaf("billing")
    ca.write(certs / "next", "billing", second)
    for name in ("billing.pem", "billing-key.pem"):  # atomic renames, as cert tooling does
        (certs / "next" / name).replace(certs / name)
    other = MeshCA(TRUST_DOMAIN)
    (certs / "roots.pem").write_bytes(
        pki.certificate_pem(ca.cert) + pki.certificate_pem(other.cert)
    )
    await gateway.wait_for(
        lambda: (
            gateway.site.current()[1].leaves[sni_for("billing")].certificate.serial_number
            == second.certificate.serial_number
            and len(gateway.site.current()[1].roots) == 2
        )
    )

    def new_handshake(files) -> int:
        c, k, r = files
        with tls_connect(gateway.port, sni_for("billing"), c, k, r) as sock:
            sock.sendall(b"new")
            assert sock.recv(3) == b"new"
            return serial(sock)

    assert await in_thread(new_handshake, (cert, key, root)) == second.certificate.serial_number
    # A client whose leaf comes from the newly added root is accepted too.
    other_files = gateway.client_files("web", other.leaf("web"))
    assert (
        await in_thread(new_handshake, (other_files[0], other_files[1], root))
        == second.certificate.serial_number
    )

    def still_streaming() -> bytes:
        old.sendall(b"old connection")
        return old.recv(100)

    assert await in_thread(still_streaming) == b"old connection"
    old.close()


@pytest_twisted.ensureDeferred
async def test_resumed_sessions_keep_the_client_identity_and_are_authorized_again(
    gateway, upstreams
):
    """TLS session resumption on the listener: a resumed session still carries the
    client's certificate (the access log names web), and every connection is authorized
    afresh — a billing session resumed towards payments is still denied."""
    billing, payments = upstreams(hello(b"billing")), upstreams(hello(b"payments"))
    rules = [intentions("billing", ("web", "allow")), intentions("payments", ("web", "deny"))]
    setup_catalog(gateway, {"billing": [billing.port], "payments": [payments.port]}, rules)
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(root))
    ctx.load_cert_chain(str(cert), str(key))

    def call(sni: str, session: ssl.SSLSession | None) -> tuple[bytes, bool, ssl.SSLSession]:
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as sock:
            sock.sendall(b"x")
            return read_all(sock), sock.session_reused, sock.session

    first, reused, session = await in_thread(call, sni_for("billing"), None)
    assert (first, reused) == (b"billing", False)
    again, reused, _ = await in_thread(call, sni_for("billing"), session)
    assert (again, reused) == (b"billing", True)
    denied, _, _ = await in_thread(call, sni_for("payments"), session)
    assert denied == b"" and payments.accepted == 0
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    records = gateway.access_records()
    assert all(r["source"].endswith("/svc/web") for r in records)
    assert [r["decision"] for r in records] == ["allow", "allow", "deny"]


@pytest_twisted.ensureDeferred
async def test_alpn_is_agreed_by_the_destination_protocol(gateway, upstreams):
    """A client offering h2 gets h2 from an http2 destination, and no ALPN at all from a
    TCP one (as Consul's TCP filter chains); the access log records what was agreed."""
    raw = upstreams(hello(b"tcp here"))
    setup_catalog(gateway, {"grpcsvc": [raw.port], "billing": [raw.port]})
    write_json(
        gateway.catalog / "defaults.json",
        {"Kind": "service-defaults", "Name": "grpcsvc", "Protocol": "http2"},
    )
    await gateway.start()
    await gateway.wait_for(
        lambda: gateway.site.current()[0].lookup(sni_for("grpcsvc")).protocol == "http2"
    )
    assert await in_thread(alpn_call, gateway, "grpcsvc", ["h2", "http/1.1"]) == (b"", "h2")
    assert await in_thread(alpn_call, gateway, "billing", ["h2", "http/1.1"]) == (
        b"tcp here",
        None,
    )
    await gateway.wait_for(lambda: len(connection_records(gateway)) == 2)
    assert sorted(str(r["alpn"]) for r in connection_records(gateway)) == ["None", "h2"]


def connection_records(gateway) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") != "request"]


def alpn_call(gateway, service: str, offer: list[str]) -> tuple[bytes, str | None]:
    """Handshake offering ``offer``; read what arrives until the gateway closes (an L7
    connection with no request is closed by the client at once)."""
    cert, key, root = gateway.client_files("web")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(root))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(offer)
    raw_sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    with ctx.wrap_socket(raw_sock, server_hostname=sni_for(service)) as sock:
        agreed = sock.selected_alpn_protocol()
        if agreed is not None:  # L7: nothing comes unasked
            return b"", agreed
        return read_all(sock), agreed


@pytest_twisted.ensureDeferred
async def test_an_http2_destination_also_agrees_to_http1_with_a_client_offering_only_it(
    gateway, upstreams
):
    """ALPN for http2/grpc destinations offers h2 first and http/1.1 too, so a client
    that speaks only HTTP/1.1 is still served (Envoy's codec AUTO); one offering both
    gets h2."""
    setup_catalog(gateway, {"grpcsvc": [upstreams(hello(b"unused")).port]})
    write_json(
        gateway.catalog / "defaults.json",
        {"Kind": "service-defaults", "Name": "grpcsvc", "Protocol": "grpc"},
    )
    await gateway.start()
    await gateway.wait_for(
        lambda: gateway.site.current()[0].lookup(sni_for("grpcsvc")).protocol == "grpc"
    )
    assert (await in_thread(alpn_call, gateway, "grpcsvc", ["http/1.1"]))[1] == "http/1.1"
    assert (await in_thread(alpn_call, gateway, "grpcsvc", ["http/1.1", "h2"]))[1] == "h2"


class MemoryClient:
    """A pyOpenSSL client on memory BIOs over a blocking socket, so a test decides
    exactly how the ciphertext is cut into TCP writes."""

    def __init__(self, port: int, sni: str, files, max_version: int = 0) -> None:
        cert, key, root = files
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(key))
        ctx.load_verify_locations(str(root))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        if max_version:
            ctx.set_max_proto_version(max_version)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = SSL.Connection(ctx, None)
        self.tls.set_connect_state()
        self.tls.set_tlsext_host_name(sni.encode())
        self.drive(self.tls.do_handshake)

    def outgoing(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                return out

    def drive(self, step, deadline: float = 10.0):
        """Call ``step`` until it stops wanting bytes from the network."""
        end = time.monotonic() + deadline
        while True:
            try:
                result = step()
            except SSL.WantReadError:
                self.sock.sendall(self.outgoing())
                self.sock.settimeout(max(0.01, end - time.monotonic()))
                data = self.sock.recv(65536)  # socket.timeout if the gateway stays silent
                if not data:
                    raise ConnectionError("gateway closed the connection") from None
                self.tls.bio_write(data)
                continue
            self.sock.sendall(self.outgoing())
            return result

    def read_exactly(self, size: int) -> bytes:
        got = bytearray()
        while len(got) < size:
            got += self.drive(lambda: self.tls.recv(65536))
        return bytes(got)

    def close(self) -> None:
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_records_cut_anywhere_by_tcp_arrive_whole_and_in_order(gateway, upstreams):
    """The gateway reads records fed in arbitrary pieces (a header split over two
    reads, a body over many, several records in one read): every byte reaches the
    service in order and comes back through the echo."""
    echo_up = upstreams(echo)
    setup_catalog(gateway, {"billing": [echo_up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    rng = random.Random(7)
    messages = [rng.randbytes(rng.choice([1, 5, 300, 4096, 16384, 40000])) for _ in range(40)]

    def run() -> bytes:
        client = MemoryClient(gateway.port, sni_for("billing"), files)
        try:
            for message in messages:
                client.tls.sendall(message)
            wire = client.outgoing()
            at = 0
            while at < len(wire):
                piece = rng.choice([1, 2, 3, 4, 5, 6, 7, 200, 1500, 20000])
                client.sock.sendall(wire[at : at + piece])
                at += piece
                if piece < 8 or rng.random() < 0.2:
                    time.sleep(0.005)  # let the gateway read what is there so far
            return client.read_exactly(sum(map(len, messages)))
        finally:
            client.close()

    assert await in_thread(run) == b"".join(messages)


@pytest_twisted.ensureDeferred
async def test_a_renegotiation_attempt_is_refused_at_once_mid_stream(gateway, upstreams):
    """A record without application data (a TLS 1.2 renegotiation ClientHello) makes
    OpenSSL answer (a no_renegotiation alert): the answer reaches the client at once,
    though the service has nothing to send, and the data before it was relayed."""
    quiet = threading.Event()

    def silent_after_hello(sock: socket.socket, up: Upstream) -> None:
        sock.sendall(sock.recv(100))  # echo the first message, then only listen
        quiet.wait(15)

    upstream = upstreams(silent_after_hello)
    setup_catalog(gateway, {"billing": [upstream.port]})
    await gateway.start()
    files = gateway.client_files("web")

    def run() -> tuple[bytes, str]:
        client = MemoryClient(gateway.port, sni_for("billing"), files, SSL.TLS1_2_VERSION)
        try:
            client.drive(lambda: client.tls.sendall(b"ping"))
            echoed = client.read_exactly(4)
            assert client.tls.renegotiate()
            try:
                client.drive(client.tls.do_handshake, deadline=5.0)
            except SSL.Error as e:
                return echoed, str(e)
            return echoed, "renegotiated"
        finally:
            quiet.set()
            client.close()

    echoed, outcome = await in_thread(run)
    assert echoed == b"ping"
    assert "no renegotiation" in outcome
