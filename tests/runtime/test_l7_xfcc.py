"""``x-forwarded-client-cert`` end to end through an L7 gateway.

The gateway runs in-process (file catalog with a ``mesh`` entry or none, builtin CA,
intentions); a real mesh mTLS client sends its own (forged) XFCC header; a real
HTTP/1.1 service (h11, 127.0.0.1 port 0) records the headers it receives. Consul's
``mesh`` entry: ``HTTP.SanitizeXForwardedClientCert`` true is Envoy's SANITIZE (the
header removed, none added); false or absent is APPEND_FORWARD.
"""

from __future__ import annotations

import hashlib

import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.harness import TRUST_DOMAIN, in_thread, sleep, sni_for, tls_connect, write_json
from tests.runtime.l7_support import HttpService, get, link, mesh_http

FORGED = 'By=spiffe://evil/svc/billing;URI=spiffe://evil/svc/admin;Subject="CN=admin"'


def _send(gateway, path: str, files=None) -> int:
    conn = mesh_http(gateway, "billing", "web")
    if files is not None:  # this leaf, whose hash the test checks
        conn.sock.close()
        conn.sock = tls_connect(gateway.port, sni_for("billing"), *files)
    try:
        return get(conn, path, headers={"X-Forwarded-Client-Cert": FORGED})[0]
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_default_appends_the_gateways_element_to_what_the_client_sent(gateway, upstreams):
    """No ``mesh`` entry (APPEND_FORWARD): the service gets the client's XFCC value
    first, then exactly one element of this hop: ``By`` the gateway's SPIFFE ID for the
    service, ``Hash`` the SHA-256 of the client's leaf, ``Subject`` quoted, ``URI`` the
    client's SPIFFE ID."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(_send, gateway, "/x", files) == 200
    values = [v for k, v in service.requests[0].headers if k == "x-forwarded-client-cert"]
    assert len(values) == 1
    forwarded, ours = values[0].rsplit(",By=", 1)
    assert forwarded == FORGED
    fields = dict(part.split("=", 1) for part in f"By={ours}".split(";"))
    cert_path = files[0]
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert fields["By"].startswith(f"spiffe://{TRUST_DOMAIN}/") and fields["By"].endswith(
        "/svc/billing"
    )
    assert fields["Hash"] == hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
    assert fields["URI"] == f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
    assert fields["Subject"].startswith('"') and fields["Subject"].endswith('"')


@pytest_twisted.ensureDeferred
async def test_sanitize_removes_the_clients_header_and_adds_none(gateway, upstreams):
    """A ``mesh`` entry with ``HTTP.SanitizeXForwardedClientCert = true`` (written while
    the gateway runs): from the next request on, the service receives no
    ``x-forwarded-client-cert`` at all — neither the client's forged one nor the
    gateway's."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    assert await in_thread(_send, gateway, "/before") == 200
    assert service.requests[0].header("x-forwarded-client-cert") is not None
    write_json(
        gateway.catalog / "mesh.json",
        {"Kind": "mesh", "HTTP": {"SanitizeXForwardedClientCert": True}},
    )
    for _ in range(100):  # the file catalog's poll picks the entry up
        if gateway.site.l7.mesh_http().sanitize_x_forwarded_client_cert:
            break
        await sleep(0.05)
    else:
        raise AssertionError("the mesh entry never applied")
    assert await in_thread(_send, gateway, "/after") == 200
    after = service.requests[-1]
    assert after.target == "/after"
    assert [k for k, _ in after.headers if k == "x-forwarded-client-cert"] == []
    assert b"spiffe://evil" not in bytes(service.raw).split(b"GET /after")[1]
