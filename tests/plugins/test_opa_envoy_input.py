"""The input document a running gateway sends to OPA is the one opa-envoy-plugin builds for
Envoy's network ext_authz check: real mTLS clients on 127.0.0.1, the project's OPA REST
double (real Rego) recording what it was sent."""

from __future__ import annotations

from urllib.parse import unquote

import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.harness import hello, in_thread, intentions, request, sni_for
from tests.opa_server import opa_servers_fixture  # noqa: F401  (provides opa_servers)
from tests.plugins.test_opa_gateway import call, setup

ALLOW_ALL = "package envoy.authz\n\nallow := true\n"


@pytest_twisted.ensureDeferred
async def test_the_document_is_opa_envoy_plugins_for_a_tcp_check(gateway, upstreams, opa_servers):
    """version, parsed_path [""], parsed_query {}, parsed_body null, truncated_body false;
    destination.service is the requested server name and source.service is absent (Envoy's
    TCP check); destination.address is the connection's local address; source.certificate
    is the client's leaf as URL-encoded PEM (include_peer_certificate); tgw's own facts
    are under input.tgw only."""
    up = upstreams(hello(b"served"))
    server = opa_servers.start(ALLOW_ALL)
    section = f'url = "{server.url}"\ntimeout = "2s"\ninclude_peer_certificate = true'
    setup(gateway, up.port, [intentions("billing", ("*", "allow"))], section)
    await gateway.start()
    sent_sni = sni_for("billing") + "."  # a trailing dot: routed, and passed on as sent
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sent_sni, files) == b"served"
    document = server.requests[0]["body"]["input"]
    assert set(document) == {
        "attributes",
        "version",
        "parsed_path",
        "parsed_query",
        "parsed_body",
        "truncated_body",
        "tgw",
    }
    assert document["version"] == {"ext_authz": "v3", "encoding": "protojson"}
    assert document["parsed_path"] == [""] and document["parsed_query"] == {}
    assert document["parsed_body"] is None and document["truncated_body"] is False
    attributes = document["attributes"]
    assert "service" not in attributes["source"]
    assert attributes["destination"]["service"] == sent_sni
    assert attributes["tlsSession"] == {"sni": sent_sni}
    assert attributes["destination"]["address"] == {
        "socketAddress": {"address": "127.0.0.1", "portValue": gateway.port}
    }
    leaf = x509.load_pem_x509_certificate(files[0].read_bytes())
    encoded = attributes["source"]["certificate"]
    assert encoded.startswith("-----BEGIN%20CERTIFICATE-----%0A")  # Envoy's encoding
    assert unquote(encoded) == leaf.public_bytes(Encoding.PEM).decode()
    assert document["tgw"]["sni"] == sni_for("billing")
    assert document["tgw"]["source"]["service"] == "web"
    assert document["tgw"]["destination"]["service"] == "billing"


@pytest_twisted.ensureDeferred
async def test_no_certificate_unless_asked(gateway, upstreams, opa_servers):
    """Without include_peer_certificate the client's certificate is not sent (Envoy's
    default), and the site does not copy it into the request at all."""
    up = upstreams(hello(b"served"))
    server = opa_servers.start(ALLOW_ALL)
    setup(gateway, up.port, [intentions("billing", ("*", "allow"))], f'url = "{server.url}"')
    await gateway.start()
    assert await call(gateway, "web") == b"served"
    source = server.requests[0]["body"]["input"]["attributes"]["source"]
    assert "certificate" not in source and source["principal"].endswith("/svc/web")
