"""Issue 16 review F1: a connection whose handshake spans a change of routes or trust
roots is verified and routed against those current when its handshake finishes, not
those of its accept time (a client can hold a bare TCP connection open across the
change and finish the handshake afterwards).

Real TLS clients on loopback against the in-process gateway; catalogs are files.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted

from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    Gateway,
    client_context,
    gateway_entry,
    in_thread,
    sni_for,
    write_json,
)
from tests.runtime.test_recheck import catalog, open_echo


def served(sock: ssl.SSLSocket) -> bytes:
    """What the gateway echoes of one ``hi`` on ``sock``: b"" when it closed instead."""
    sock.settimeout(5)
    got = b""
    try:
        sock.sendall(b"hi")
        while len(got) < 2:
            data = sock.recv(10)
            if not data:
                break
            got += data
    except (ssl.SSLError, OSError):
        pass  # a reset is a close too
    sock.close()
    return got


async def bare_connection(gateway: Gateway) -> socket.socket:
    """A TCP connection the gateway accepted, with no ClientHello sent yet."""
    before = len(gateway.site.active)
    raw = await in_thread(socket.create_connection, ("127.0.0.1", gateway.port), 10)
    await gateway.wait_for(lambda: len(gateway.site.active) == before + 1)
    return raw


def handshake(raw: socket.socket, files: tuple[Path, Path, Path]) -> ssl.SSLSocket:
    return client_context(*files).wrap_socket(raw, server_hostname=sni_for("billing"))


async def closed_record(gateway: Gateway, cause: str) -> None:
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
    causes = [r["close_cause"] for r in gateway.access_records()]
    assert cause in causes, causes
    assert gateway.metric("tgw_downstream_rejected_total", reason=cause) == 1


@pytest_twisted.ensureDeferred
async def test_a_handshake_finished_after_its_service_was_unlinked_is_not_routed(
    gateway, upstreams
):
    """The client connects, the terminating-gateway entry stops linking billing, then the
    client sends its ClientHello: the connection is closed as ``route_removed`` instead
    of reaching billing; a fresh connection is refused too."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")
    raw = await bare_connection(gateway)
    write_json(gateway.catalog / "gateway.json", gateway_entry("payments"))
    billing = sni_for("billing")
    await gateway.wait_for(lambda: gateway.site.current()[0].lookup(billing) is None)
    sock = await in_thread(handshake, raw, files)
    assert await in_thread(served, sock) == b""
    await closed_record(gateway, "route_removed")


@pytest_twisted.ensureDeferred
async def test_a_handshake_finished_after_its_root_was_removed_is_refused(gateway, upstreams):
    """file_certs drops a root from roots.pem while a client of that root holds a bare TCP
    connection: its handshake, finished afterwards, is closed as ``trust_root_removed``
    (it was accepted under the old roots); a client of the kept root is still served."""
    from gwcore.contract import pki
    from gwcore.plugins.builtin_ca import load_or_create_ca
    from gwcore.testing import MeshCA

    up = upstreams()
    catalog(gateway.catalog, up.port, ("*", "allow"))
    certs = gateway.root / "certs"
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = f"""
[sites.main.file_certs]
roots = ["{certs / "roots.pem"}"]
poll_interval = "0.05s"
[sites.main.file_certs.leaves]
billing = {{ cert = "{certs / "billing.pem"}", key = "{certs / "billing-key.pem"}" }}
"""
    ca = MeshCA(TRUST_DOMAIN, *load_or_create_ca(gateway.root / "ca", TRUST_DOMAIN))
    retired = MeshCA(TRUST_DOMAIN)
    ca.write(certs, "billing", ca.leaf("billing"))
    (certs / "roots.pem").write_bytes(
        pki.certificate_pem(ca.cert) + pki.certificate_pem(retired.cert)
    )
    await gateway.start()
    cert, key = retired.write(gateway.root / "retired", "web", retired.leaf("web"))
    server_root = ca.write_root(gateway.root / "retired" / "root.pem")
    raw = await bare_connection(gateway)

    (certs / "roots.pem").write_bytes(pki.certificate_pem(ca.cert))
    await gateway.wait_for(lambda: len(gateway.site.current()[1].roots) == 1)
    sock = await in_thread(handshake, raw, (cert, key, server_root))
    assert await in_thread(served, sock) == b""
    await closed_record(gateway, "trust_root_removed")
    kept = await open_echo(gateway)
    kept.close()


@pytest_twisted.ensureDeferred
async def test_a_handshake_finished_after_a_reload_removed_its_root_is_refused(gateway, upstreams):
    """A reload (SIGHUP) replaces the CA while a client of the old CA holds a bare TCP
    connection on the old site: its handshake, finished after the reload, is checked
    against the new site's roots and closed as ``trust_root_removed``."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")
    raw = await bare_connection(gateway)
    gateway.write_config()
    path = gateway.root / "tgw.toml"
    path.write_text(path.read_text().replace('ca_dir = "ca"', 'ca_dir = "ca-rotated"'))
    await gateway.service.reload()
    sock = await in_thread(handshake, raw, files)
    assert await in_thread(served, sock) == b""
    await closed_record(gateway, "trust_root_removed")


@pytest.mark.parametrize("max_version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
@pytest_twisted.ensureDeferred
async def test_a_resumed_session_through_an_intermediate_is_closed_when_its_root_goes(
    gateway, upstreams, max_version
):
    """Issue 16 review F2: a client leaf issued by an intermediate of a root that is then
    removed from roots.pem, on a live connection that *resumed* its session (whose peer
    chain holds no intermediate): it is closed as ``trust_root_removed`` within a second,
    using the intermediates remembered from the full handshake."""
    from gwcore.contract import pki
    from gwcore.plugins.builtin_ca import load_or_create_ca
    from gwcore.testing import MeshCA
    from tests.net.test_client_identity import intermediate_ca, resuming_client
    from tests.runtime.test_recheck import CLOSE_WITHIN, closed_at

    up = upstreams()
    catalog(gateway.catalog, up.port, ("*", "allow"))
    certs = gateway.root / "certs"
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = f"""
[sites.main.file_certs]
roots = ["{certs / "roots.pem"}"]
poll_interval = "0.05s"
[sites.main.file_certs.leaves]
billing = {{ cert = "{certs / "billing.pem"}", key = "{certs / "billing-key.pem"}" }}
"""
    ca = MeshCA(TRUST_DOMAIN, *load_or_create_ca(gateway.root / "ca", TRUST_DOMAIN))
    retired = MeshCA(TRUST_DOMAIN)
    ca.write(certs, "billing", ca.leaf("billing"))
    (certs / "roots.pem").write_bytes(
        pki.certificate_pem(ca.cert) + pki.certificate_pem(retired.cert)
    )
    await gateway.start()
    leaf = intermediate_ca(retired).leaf("web")
    assert len(leaf.chain) == 2  # leaf and intermediate
    cert, key = retired.write(gateway.root / "retired", "web", leaf)
    ctx = resuming_client((cert, key, ca.write_root(gateway.root / "retired" / "root.pem")))
    if max_version is not None:
        ctx.maximum_version = max_version

    def echoed(session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        sock = ctx.wrap_socket(raw, server_hostname=sni_for("billing"), session=session)
        sock.sendall(b"hi")
        assert sock.recv(10) == b"hi"  # the TLS 1.3 ticket came before the echo
        return sock

    first = await in_thread(echoed)
    assert not first.session_reused
    session = first.session
    first.close()
    live = await in_thread(echoed, session)
    assert live.session_reused
    (certs / "roots.pem").write_bytes(pki.certificate_pem(ca.cert))
    await gateway.wait_for(lambda: len(gateway.site.current()[1].roots) == 1)
    applied = time.monotonic()
    closed = await in_thread(closed_at, live)
    live.close()
    assert closed is not None, "the resumed connection was left open"
    assert closed - applied < CLOSE_WITHIN
    await closed_record(gateway, "trust_root_removed")


@pytest_twisted.ensureDeferred
async def test_a_handshake_finished_after_its_site_was_removed_is_not_routed(gateway, upstreams):
    """A reload removes the site (renamed) while a client holds a bare TCP connection
    on it: its handshake, finished after the reload, is closed as ``route_removed``."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")
    old_site = gateway.site
    raw = await bare_connection(gateway)
    path = gateway.root / "tgw.toml"
    path.write_text(path.read_text().replace("[sites.main", "[sites.renamed"))
    await gateway.service.reload()
    assert old_site.recheck.retired is not None
    sock = await in_thread(handshake, raw, files)
    assert await in_thread(served, sock) == b""
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
    assert [r["close_cause"] for r in gateway.access_records()] == ["route_removed"]
    assert up.accepted == 0
