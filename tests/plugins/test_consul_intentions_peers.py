"""Issue 16 review F4b: consul_intentions keeps docs/security.md's promise that an
identity of another trust domain never matches a local intention and never gets the
agent's default: its guard abstains, and the site's ``default_policy`` decides.

Uses the Consul double (gwcore.testing.consul) for the catalog, the mesh CA and the
intentions; the peer's CA is a file_certs trust bundle. Real TLS on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from gwcore.testing import MeshCA
from gwcore.testing.consul import ConsulDouble
from tests.harness import hello, in_thread, request, sni_for
from tests.plugins.test_consul_gateway import ConsulGateway, external

PEER = "peer.consul"


@dataclass
class PeeredGateway(ConsulGateway):
    """The Consul stack plus file_certs holding the peer trust domain's bundle."""

    peer_root: Path | None = None

    def write_config(self) -> Path:
        path = super().write_config()
        bundle = f'[sites.main.file_certs.trust_bundles]\n"{PEER}" = ["{self.peer_root}"]\n'
        path.write_text(path.read_text() + bundle)
        return path


@pytest.mark.parametrize(("site_default", "served"), [("deny", False), ("allow", True)])
@pytest_twisted.ensureDeferred
async def test_a_peer_identity_gets_the_site_default_not_the_agent_default(
    tmp_path, upstreams, site_default, served
):
    """Uses the Consul double, whose agent allows by default (ACLs off). A peer-domain
    ``web`` (no intention names it) is decided by the site's ``default_policy`` (refused
    under deny, served under allow), not by the agent's allow; the local ``web`` still
    gets the agent's default (served), and a peer ``ops`` does not match the local
    ``ops`` allow intention."""
    consul = ConsulDouble(reactor, jitter=False)
    await consul.start()
    up = upstreams(hello(b"billing"))
    external(consul, "billing", up.port)
    consul.put_config(
        {"Kind": "service-intentions", "Name": "billing",
         "Sources": [{"Name": "ops", "Action": "allow"}]}
    )  # fmt: skip
    consul.link("legacy-gw", "billing")
    peer = MeshCA(PEER)
    gw = PeeredGateway(tmp_path / "gw", double=consul)
    gw.peer_root = peer.write_root(tmp_path / "peer-root.pem")
    gw.plugins = [*gw.plugins, "file_certs"]
    gw.site_options = {"default_policy": site_default, "extra_trust_domains": [PEER]}
    try:
        await gw.start()
        guard = next(e for e in gw.site.engines if e.name == "consul_intentions")
        await gw.wait_for(lambda: guard._source.default.readable)
        billing = sni_for("billing")
        _, _, bundle = gw.client("web")
        for service in ("web", "ops"):
            cert, key = peer.write(tmp_path / "peer", service, peer.leaf(service))
            got = await in_thread(request, gw.port, billing, (cert, key, bundle))
            assert got == (b"billing" if served else b""), service
        assert await in_thread(request, gw.port, billing, gw.client("web")) == b"billing"
        await gw.wait_for(lambda: len(gw.access_records()) == 3)
        peers = [r for r in gw.access_records() if PEER in (r.get("source") or "")]
        assert len(peers) == 2, gw.access_records()
        assert all(r["engine"] == "default" for r in peers), peers
    finally:
        await gw.stop()
        await consul.stop()
