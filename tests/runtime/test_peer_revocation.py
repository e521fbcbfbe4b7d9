"""Issue 16 review F6: how to revoke a peer CA quickly (docs/certificates.md) works as
documented: remove its trust bundle (and its domain) from the configuration and send
SIGHUP; the peer's live clients are closed within a second as ``trust_root_removed``
and new ones are refused, while local clients keep streaming. (An emptied or deleted
bundle file is *not* a revocation: file_certs keeps the previous roots, as for any
unreadable certificate file.)

Real TLS clients on loopback against the in-process gateway; catalogs are files.
"""

from __future__ import annotations

import time

import pytest_twisted

from gwcore.testing import MeshCA
from tests.harness import HandshakeRefusedError, in_thread, sni_for, tls_connect
from tests.runtime.test_recheck import CLOSE_WITHIN, catalog, closed_at, open_echo

PEER = "peer.consul"


@pytest_twisted.ensureDeferred
async def test_revoking_a_peer_ca_by_reload_closes_its_clients_and_refuses_new_ones(
    gateway, upstreams
):
    """A peer client (allowed by the site's default) streams; the operator removes the
    peer's ``trust_bundles`` entry and the domain from ``extra_trust_domains`` and
    reloads: the peer connection is closed within a second (``trust_root_removed``), a
    new peer handshake is refused, and the local client keeps streaming."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    peer = MeshCA(PEER)
    peer_root = peer.write_root(gateway.root / "peer-roots.pem")
    gateway.plugins = ["file_catalog", "builtin_ca", "file_certs", "intentions"]
    gateway.site_options.update(default_policy="allow", extra_trust_domains=[PEER])
    gateway.extra_site = f'[sites.main.file_certs.trust_bundles]\n"{PEER}" = ["{peer_root}"]\n'
    await gateway.start()
    local = await open_echo(gateway)
    cert, key = peer.write(gateway.root / "peer", "web", peer.leaf("web"))
    server_root = gateway.ca.write_root(gateway.root / "peer" / "server-root.pem")
    live = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, server_root)
    await in_thread(live.sendall, b"hi")
    assert await in_thread(live.recv, 10) == b"hi"

    gateway.plugins = ["file_catalog", "builtin_ca", "intentions"]
    gateway.site_options.pop("extra_trust_domains")
    gateway.extra_site = ""
    gateway.write_config()
    closing = in_thread(closed_at, live)
    await gateway.service.reload()
    applied = time.monotonic()
    closed = await closing
    live.close()
    assert closed is not None, "the peer's connection was left open"
    assert closed - applied < CLOSE_WITHIN
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
    assert gateway.access_records()[0]["close_cause"] == "trust_root_removed"

    def refused() -> bool:
        try:
            sock = tls_connect(gateway.port, sni_for("billing"), cert, key, server_root)
        except HandshakeRefusedError:
            return True
        try:
            sock.sendall(b"hi")
            return sock.recv(10) == b""
        except OSError:
            return True
        finally:
            sock.close()

    assert await in_thread(refused)
    await in_thread(local.sendall, b"still")
    assert await in_thread(local.recv, 10) == b"still"
    local.close()
