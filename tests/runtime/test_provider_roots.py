"""Issue 16 review F5: a certificate provider whose ``trust_roots()`` answers a
``TrustRoot`` without a trust domain (``TrustRoot(cert, None)``), or something that is
no certificate, does not crash the start: the item is left out (it vouches for no
client) with one error line naming the provider, and the site runs on the other roots.

Real gateway and TLS clients on loopback; the provider is a third-party addon module.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from gwcore.contract import pki
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import HandshakeRefusedError, echo, in_thread, sni_for, tls_connect
from tests.runtime.test_recheck import catalog, open_echo

PROVIDER = """
from cryptography import x509
from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import SourceHealth, TrustRoot

ROOT = x509.load_pem_x509_certificate(open({root!r}, "rb").read())

class Odd:
    name = "odd-provider"
    def __init__(self, site): self.site = site
    def start(self, changed): return None
    def stop(self): return None
    def prepare(self, services): return None
    def leaf(self, service): return None
    def health(self): return SourceHealth(last_success=0.0, last_error=None)
    def trust_roots(self): return [{item}]

@hookimpl
def tgw_certificate_providers(site):
    return [Odd(site)] if "oddprov" in site.config.plugins else []
"""


@pytest.mark.parametrize(
    "item",
    ["TrustRoot(ROOT, None)", 'TrustRoot(ROOT, "")', "TrustRoot(None, 'x')", "'not a cert'"],
    ids=["no-domain", "empty-domain", "no-certificate", "a-string"],
)
@pytest_twisted.ensureDeferred
async def test_a_trust_root_without_a_trust_domain_is_left_out_with_one_error(
    gateway, upstreams, item
):
    """The gateway starts; one error line names the provider; the odd provider's root
    vouches for nobody (its client is refused), the builtin CA's client is served."""
    odd = MeshCA(TRUST_DOMAIN)
    root = odd.write_root(gateway.root / "odd-root.pem")
    (gateway.root / "addons").mkdir(parents=True)
    (gateway.root / "addons" / "oddprov.py").write_text(PROVIDER.format(root=str(root), item=item))
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "oddprov"]
    up = upstreams(echo)
    catalog(gateway.catalog, up.port, ("*", "allow"))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gateway.start()
        gateway.site.trust_bundles()  # read again: still one line
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "cannot be used" in formatEvent(e)]
    assert len(lines) == 1 and "'odd-provider'" in lines[0], lines
    assert pki.certificate_pem(odd.cert) not in b"".join(
        pki.certificate_pem(c) for c in gateway.site.trust_roots()
    )
    kept = await open_echo(gateway)
    kept.close()
    cert, key = odd.write(gateway.root / "odd", "web", odd.leaf("web"))
    server_root = gateway.ca.write_root(gateway.root / "odd" / "server-root.pem")

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
