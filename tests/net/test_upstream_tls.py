"""TLS and mTLS origination end to end: the gateway as a TLS client of real TLS servers
(Python's ssl module) on 127.0.0.1, configured by Consul's CAFile/CertFile/KeyFile/SNI."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest_twisted
from cryptography import x509
from OpenSSL import SSL

from gwcore.contract import pki
from gwcore.net.upstream_tls import client_context, mesh_client_context
from gwcore.testing import MeshCA
from tests.h2_peers import H2SocketClient, request_head, serve_h2_echo, tls_h2_socket
from tests.harness import (
    Upstream,
    in_thread,
    intentions,
    registration,
    sni_for,
    tls_connect,
    write_json,
)

SERVICE_NAME = "billing.corp.example"


class ExternalPKI:
    """The external service's own CA (not the mesh's), with files on disk."""

    def __init__(self, root: Path, name: str = "external") -> None:
        self.root = root
        self.cert, self.key = pki.new_ca(f"{name}.test", common_name=f"{name} CA")
        self.ca_file = root / f"{name}-ca.pem"
        self.ca_file.parent.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(pki.certificate_pem(self.cert))

    def leaf(self, name: str, dns: list[str]) -> tuple[Path, Path]:
        leaf = pki.issue_leaf(self.cert, self.key, "", dns_names=dns, common_name=name)
        chain, key = pki.leaf_pem(leaf)
        cert_path, key_path = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        cert_path.write_bytes(chain)
        key_path.write_bytes(key)
        return cert_path, key_path


def tls_server(
    cert: Path, key: Path, client_ca: Path | None = None, max_version: str | None = None
):
    """A TLS echo server; records version, resumption and the client's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(client_ca))

    def handle(sock: socket.socket, up: Upstream) -> None:
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            up.results.append({"error": str(e)})
            return
        der = tls.getpeercert(binary_form=True)
        up.results.append(
            {
                "version": tls.version(),
                "reused": tls.session_reused,
                "client_cn": x509.load_der_x509_certificate(der).subject.rfc4514_string()
                if der
                else None,
            }
        )
        with contextlib.suppress(ssl.SSLError, OSError):  # the gateway may cut it short
            while data := tls.recv(65536):
                tls.sendall(data)
        tls.close()

    return handle


def link(gateway, up: Upstream, **tls: str) -> None:
    service = {"Name": "billing", **tls}
    write_json(
        gateway.catalog / "gw.json",
        {"Kind": "terminating-gateway", "Name": "legacy-gw", "Services": [service]},
    )
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))


def attempt(gateway, payload: bytes = b"ping") -> bytes:
    """Send ``payload`` through the gateway and read the echo (b"" if refused)."""
    cert, key, root = gateway.client_files("web")
    try:
        with tls_connect(gateway.port, sni_for("billing"), cert, key, root) as sock:
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got
    except (ssl.SSLError, OSError):
        return b""


@pytest_twisted.ensureDeferred
async def test_ca_and_sni_origination_works_and_resumes_sessions(gateway, upstreams, tmp_path):
    """CAFile + SNI: the service's certificate is verified for the SNI; a second connection
    resumes the TLS session."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    assert await in_thread(attempt, gateway, b"first") == b"first"
    assert await in_thread(attempt, gateway, b"second") == b"second"
    assert [r["version"] for r in up.results] == ["TLSv1.3", "TLSv1.3"]
    assert up.results[1]["reused"] is True
    assert up.results[0]["client_cn"] is None  # one-way TLS: no client certificate


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_name_fails_as_san_mismatch(gateway, upstreams, tmp_path):
    """A valid chain for the wrong name is refused, counted as tls_san_mismatch, client closed."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("other", ["other.corp.example"])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    assert await in_thread(attempt, gateway) == b""
    assert (
        gateway.metric(
            "tgw_upstream_tls_errors_total", service="billing", reason="tls_san_mismatch"
        )
        == 1
    )
    assert (
        gateway.metric(
            "tgw_upstream_connect_failures_total", service="billing", reason="tls_san_mismatch"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_wrong_name_fails_inside_the_handshake_before_the_client_certificate_is_sent(
    gateway, upstreams, tmp_path
):
    """mTLS origination to a server whose chain is trusted but whose certificate names
    another host: the name is checked during certificate verification, so the server gets
    a bad_certificate alert and never receives the gateway's client certificate (TLS 1.3
    sends it after the server's Finished); counted as tls_san_mismatch."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("other", ["other.corp.example"])
    client_cert, client_key = ext.leaf("gateway-client", ["gw.corp.example"])
    up = upstreams(tls_server(cert, key, client_ca=ext.ca_file))
    link(
        gateway,
        up,
        CAFile=str(ext.ca_file),
        SNI=SERVICE_NAME,
        CertFile=str(client_cert),
        KeyFile=str(client_key),
    )
    await gateway.start()
    assert await in_thread(attempt, gateway) == b""
    await gateway.wait_for(lambda: len(up.results) == 1)
    (result,) = up.results
    assert "client_cn" not in result, result  # the handshake never completed on its side
    assert "ALERT_BAD_CERTIFICATE" in result["error"], result
    assert (
        gateway.metric(
            "tgw_upstream_tls_errors_total", service="billing", reason="tls_san_mismatch"
        )
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_fails_as_untrusted(gateway, upstreams, tmp_path):
    """A certificate not issued by CAFile's CA is refused (tls_untrusted)."""
    trusted, rogue = ExternalPKI(tmp_path / "ext"), ExternalPKI(tmp_path / "rogue", "rogue")
    cert, key = rogue.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(trusted.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    assert await in_thread(attempt, gateway) == b""
    assert (
        gateway.metric("tgw_upstream_tls_errors_total", service="billing", reason="tls_untrusted")
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_mtls_presents_the_configured_client_certificate(gateway, upstreams, tmp_path):
    """CAFile + CertFile + KeyFile: the service, requiring client certs, sees ours; with a
    client certificate it does not trust, it refuses and the gateway reports it."""
    ext = ExternalPKI(tmp_path / "ext")
    server_cert, server_key = ext.leaf("billing", [SERVICE_NAME])
    client_cert, client_key = ext.leaf("gateway-client", ["gw.corp.example"])
    up = upstreams(tls_server(server_cert, server_key, client_ca=ext.ca_file))
    link(
        gateway,
        up,
        CAFile=str(ext.ca_file),
        SNI=SERVICE_NAME,
        CertFile=str(client_cert),
        KeyFile=str(client_key),
    )
    await gateway.start()
    assert await in_thread(attempt, gateway) == b"ping"
    assert up.results[0]["client_cn"] == "CN=gateway-client"

    # Now a client certificate from a CA the service does not trust (atomic replace).
    rogue = ExternalPKI(tmp_path / "rogue", "rogue")
    bad_cert, bad_key = rogue.leaf("gateway-client", ["gw.corp.example"])
    bad_key.replace(client_key)
    bad_cert.replace(client_cert)
    await gateway.wait_for(lambda: tls_strategy(gateway).reloads >= 1)
    assert await in_thread(attempt, gateway) == b""
    await gateway.wait_for(
        lambda: (
            gateway.metric(
                "tgw_upstream_tls_errors_total",
                service="billing",
                reason="tls_client_cert_rejected",
            )
            == 1
        )
    )
    assert "error" in up.results[-1]


def tls_strategy(gateway):
    return next(s for s in gateway.site.strategies if s.name == "tls")


@pytest_twisted.ensureDeferred
async def test_rotated_ca_and_client_cert_apply_to_the_next_connection(
    gateway, upstreams, tmp_path
):
    """Rewriting CAFile in place and renaming a new cert/key over the old take effect for
    the next connection; a connection opened before keeps streaming."""
    old_ext = ExternalPKI(tmp_path / "old", "old")
    new_ext = ExternalPKI(tmp_path / "new", "new")
    # The service trusts client certs from both CAs and moves its own cert to the new CA.
    both = tmp_path / "both.pem"
    both.write_bytes(old_ext.ca_file.read_bytes() + new_ext.ca_file.read_bytes())
    old_server = old_ext.leaf("billing", [SERVICE_NAME])
    new_server = new_ext.leaf("billing-next", [SERVICE_NAME])
    client_cert, client_key = old_ext.leaf("client-one", ["gw.corp.example"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(old_ext.ca_file.read_bytes())
    first = upstreams(tls_server(*old_server, client_ca=both))
    link(
        gateway,
        first,
        CAFile=str(ca_file),
        SNI=SERVICE_NAME,
        CertFile=str(client_cert),
        KeyFile=str(client_key),
    )
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    held = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await in_thread(held.sendall, b"before")
    assert await in_thread(held.recv, 100) == b"before"
    assert first.results[0]["client_cn"] == "CN=client-one"

    # Rotate: new client cert by atomic rename, CA file rewritten in place, service re-keyed.
    second = upstreams(tls_server(*new_server, client_ca=both))
    staged_cert, staged_key = new_ext.leaf("client-two", ["gw.corp.example"])
    staged_key.replace(client_key)
    staged_cert.replace(client_cert)
    with ca_file.open("wb") as f:  # in place, same inode
        f.write(new_ext.ca_file.read_bytes())
    write_json(gateway.catalog / "regs.json", [registration("billing", second.port)])
    routes = gateway.site.current
    await gateway.wait_for(
        lambda: (
            tls_strategy(gateway).reloads >= 1
            and routes()[0].lookup(sni_for("billing")).endpoints[0].port == second.port
        )
    )
    assert await in_thread(attempt, gateway, b"after") == b"after"
    assert second.results[-1]["client_cn"] == "CN=client-two"

    await in_thread(held.sendall, b"still here")
    assert await in_thread(held.recv, 100) == b"still here"
    held.close()


@pytest_twisted.ensureDeferred
async def test_a_catalog_change_of_cafile_is_verified_in_full_never_resumed(
    gateway, upstreams, tmp_path
):
    """Sessions are kept per verification material: after the catalog points CAFile at
    another CA's file, the next connection makes a full handshake against the new CA
    (which does not sign the service: tls_untrusted), instead of resuming the session
    the old CA verified."""
    ext, other = ExternalPKI(tmp_path / "ext"), ExternalPKI(tmp_path / "other", "other")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    assert await in_thread(attempt, gateway, b"first") == b"first"
    assert await in_thread(attempt, gateway, b"second") == b"second"
    assert up.results[1]["reused"] is True  # resumption works under unchanged material

    link(gateway, up, CAFile=str(other.ca_file), SNI=SERVICE_NAME)
    await gateway.wait_for(
        lambda: (
            [d.tls.ca_file for d in gateway.site.catalog_view().destinations]
            == [str(other.ca_file)]
        )
    )
    assert await in_thread(attempt, gateway, b"third") == b""
    assert (
        gateway.metric("tgw_upstream_tls_errors_total", service="billing", reason="tls_untrusted")
        == 1
    )


@pytest_twisted.ensureDeferred
async def test_without_sni_only_the_chain_is_verified(gateway, upstreams, tmp_path):
    """No SNI: Consul verifies the chain only (and tgw warns once); any name is accepted."""
    ext = ExternalPKI(tmp_path / "ext")
    up = upstreams(tls_server(*ext.leaf("whatever", ["unrelated.example"])))
    link(gateway, up, CAFile=str(ext.ca_file))
    await gateway.start()
    assert await in_thread(attempt, gateway) == b"ping"


@pytest_twisted.ensureDeferred
async def test_per_service_knobs_expect_san_and_max_version(gateway, upstreams, tmp_path):
    """expect_san checks a name other than the SNI sent; max_version caps the protocol."""
    ext = ExternalPKI(tmp_path / "ext")
    up = upstreams(tls_server(*ext.leaf("billing", ["legacy-billing.internal"])))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    gateway.extra_site = """
[sites.main.upstream_tls.services.billing]
expect_san = "legacy-billing.internal"
max_version = "1.2"
"""
    await gateway.start()
    assert await in_thread(attempt, gateway) == b"ping"
    assert up.results[0]["version"] == "TLSv1.2"


@pytest_twisted.ensureDeferred
async def test_verify_chain_only_knob_accepts_a_certificate_without_the_name(
    gateway, upstreams, tmp_path
):
    """verify = "chain" turns off the SAN match (for legacy certificates without SANs)."""
    ext = ExternalPKI(tmp_path / "ext")
    up = upstreams(tls_server(*ext.leaf("billing", ["something-else.example"])))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    gateway.extra_site = '[sites.main.upstream_tls.services.billing]\nverify = "chain"\n'
    await gateway.start()
    assert await in_thread(attempt, gateway) == b"ping"


@pytest_twisted.ensureDeferred
async def test_the_agreed_alpn_is_offered_to_the_service(gateway, upstreams, tmp_path):
    """For an http2 destination the gateway originates TLS offering ``h2`` and speaks
    HTTP/2 to the service: a request over the mesh arrives and its answer (with
    trailers) comes back."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    def handle(sock: socket.socket, up: Upstream) -> None:
        with ctx.wrap_socket(sock, server_side=True) as tls:
            up.results.append(tls.selected_alpn_protocol())
            serve_h2_echo(tls)

    up = upstreams(handle)
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    write_json(
        gateway.catalog / "defaults.json",
        {"Kind": "service-defaults", "Name": "billing", "Protocol": "http2"},
    )
    await gateway.start()
    files = gateway.client_files("web")

    def call() -> Any:
        client = H2SocketClient(tls_h2_socket(gateway.port, sni_for("billing"), files))
        sid = client.request(request_head("billing", "/ping"), body=b"ping")
        client.wait(client.finished(sid))
        client.sock.close()
        return client.responses[sid]

    response = await in_thread(call)
    assert response.headers[b":status"] == b"200" and bytes(response.body) == b"ping"
    assert response.trailers == {b"x-trailer": b"done"}
    assert up.results == ["h2"]


def test_origination_contexts_release_idle_record_buffers(tmp_path) -> None:
    """Memory per idle connection: both client contexts (a service's CA file, and the
    mesh hop's in-memory leaf) set SSL_MODE_RELEASE_BUFFERS."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.certificate_pem(pki.new_ca("svc.test")[0]))
    mesh = MeshCA()
    for ctx in (
        client_context(str(ca), None, None),
        mesh_client_context(mesh.leaf("gw"), [mesh.cert]),
    ):
        assert ctx.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


@pytest_twisted.ensureDeferred
async def test_expiry_series_leave_with_the_service(gateway, upstreams, tmp_path):
    """``tgw_certificate_expiry_timestamp_seconds{kind="upstream_ca"}`` exists while the
    service is originated with TLS and is deleted when the service leaves the catalog:
    an expiry alert must not fire for a service no longer served."""
    ext = ExternalPKI(tmp_path / "ext")
    cert, key = ext.leaf("billing", [SERVICE_NAME])
    up = upstreams(tls_server(cert, key))
    link(gateway, up, CAFile=str(ext.ca_file), SNI=SERVICE_NAME)
    await gateway.start()
    assert await in_thread(attempt, gateway, b"x") == b"x"
    registry = gateway.service.metrics.registry
    labels = {"site": "main", "kind": "upstream_ca", "name": "billing"}
    expected = ext.cert.not_valid_after_utc.timestamp()
    value = lambda: registry.get_sample_value(  # noqa: E731
        "tgw_certificate_expiry_timestamp_seconds", labels
    )
    assert value() == expected
    write_json(
        gateway.catalog / "gw.json",
        {"Kind": "terminating-gateway", "Name": "legacy-gw", "Services": []},
    )
    await gateway.wait_for(lambda: value() is None)
