"""What a connection does not compute when nothing reads its access record.

The access record's certificate fields (URI SAN, serial, expiry) need the client's
certificate converted to a ``cryptography`` object and its SAN extension parsed. A
site without an access log or a ``tgw_connection_closed`` listener builds no record,
so it must not pay for them on every handshake; a site with an access log still gets
them (tests/net/test_access_schema.py), refused clients included.
"""

from __future__ import annotations

import pytest_twisted
from OpenSSL import crypto

from tests.harness import hello, in_thread, request, sni_for
from tests.net.test_terminator import setup_catalog


@pytest_twisted.ensureDeferred
async def test_without_an_access_log_the_client_certificate_is_not_described(
    gateway, upstreams, monkeypatch
):
    """Three connections through a site with no access log: each is served, and the
    client's certificate is never converted for the record's certificate fields."""
    gateway.access_log = ""
    up = upstreams(hello(b"served"))
    setup_catalog(gateway, {"billing": [up.port]})
    converted = []
    original = crypto.X509.to_cryptography

    def counting(cert):
        converted.append(cert)
        return original(cert)

    monkeypatch.setattr(crypto.X509, "to_cryptography", counting)
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(3):
        assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"served"
    await gateway.wait_for(
        lambda: gateway.metric("tgw_downstream_connections_total", service="billing") == 3
    )
    assert converted == []
