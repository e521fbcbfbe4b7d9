"""``/ready`` reports a linked service whose CAFile/CertFile/KeyFile do not load.

Before, a missing or mismatched file only showed as failed connections while /ready
said healthy. The report names the destination and the file; it does not fail the
site's readiness (the other destinations still work). It follows the files: fixed
files clear the report without a restart.
"""

from __future__ import annotations

import json

import pytest_twisted

from gwcore.contract import pki
from gwcore.policy.model import ServiceName
from tests.harness import gateway_entry, in_thread, intentions, registration, write_json
from tests.net.test_admin import get


@pytest_twisted.ensureDeferred
async def test_ready_names_the_upstream_file_that_does_not_load(gateway, upstreams) -> None:
    """A KeyFile that does not match its CertFile is reported under upstream_tls_files."""
    up = upstreams()
    ca_cert, ca_key = pki.new_ca("upstream.test")
    leaf = pki.service_leaf(ca_cert, ca_key, ServiceName("x"), "dc1", "upstream.test")
    other = pki.service_leaf(ca_cert, ca_key, ServiceName("y"), "dc1", "upstream.test")
    files = gateway.root / "up"
    files.mkdir()
    (files / "ca.pem").write_bytes(pki.certificate_pem(ca_cert))
    (files / "cert.pem").write_bytes(pki.certificate_pem(leaf.certificate))
    (files / "key.pem").write_bytes(pki.key_pem(other.key))
    link = {
        "Name": "billing",
        "CAFile": "up/ca.pem",
        "CertFile": "up/cert.pem",
        "KeyFile": "up/key.pem",
    }
    write_json(gateway.catalog / "gw.json", gateway_entry(link, "ledger"))
    regs = [registration("billing", up.port), registration("ledger", up.port)]
    write_json(gateway.catalog / "regs.json", regs)
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    await gateway.wait_for(lambda: len(gateway.site.current()[0]) == 2)

    status, _, body = await in_thread(get, gateway.admin_port, "/ready")
    site = json.loads(body)["sites"]["main"]
    assert status == 200 and site["ready"] is True
    assert site["upstream_tls_files"] == {
        "billing": [f"KeyFile {files}/key.pem does not match CertFile {files}/cert.pem"]
    }

    (files / "key.pem").write_bytes(pki.key_pem(leaf.key))  # fixed in place
    _, _, body = await in_thread(get, gateway.admin_port, "/ready")
    assert json.loads(body)["sites"]["main"]["upstream_tls_files"] == {}
