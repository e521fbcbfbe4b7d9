"""Which client certificates are a service identity (issue 16), end to end: real TLS
clients (Python's ssl) over loopback against an in-process gateway."""

from __future__ import annotations

import ssl

import pytest
import pytest_twisted

from gwcore.testing import MeshCA
from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)


def setup_catalog(gateway, services: dict[str, int], rules: list[dict] | None = None) -> None:
    write_json(gateway.catalog / "gateway.json", gateway_entry(*services))
    regs = [registration(name, port) for name, port in services.items()]
    write_json(gateway.catalog / "registrations.json", regs)
    write_json(
        gateway.catalog / "intentions.json",
        rules if rules is not None else [intentions(s, ("*", "allow")) for s in services],
    )


def attempt(port: int, sni: str, files) -> bytes:
    """One request; ``b"refused"`` when the handshake or the first read fails."""
    try:
        return request(port, sni, files)
    except (HandshakeRefusedError, ssl.SSLError, ConnectionError):
        return b"refused"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"is_ca": True}, "ca_certificate", id="ca-true"),
        # keyAgreement satisfies OpenSSL's own client-purpose check; only ours refuses it.
        pytest.param({"key_usage": ("key_agreement",)}, "bad_key_usage", id="no-signature"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_leaves_that_are_no_client_end_entity_are_refused(
    gateway, upstreams, options, reason
):
    """A leaf with a valid SPIFFE ID from the mesh CA that is itself a CA
    (basicConstraints CA:TRUE) or cannot sign is refused, counted by reason, never
    forwarded; a normal leaf from the same CA is served."""
    up = upstreams(hello(b"billing"))
    setup_catalog(gateway, {"billing": up.port})
    await gateway.start()
    bad = gateway.client_files("web", gateway.ca.leaf("web", **options))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), bad) in (b"refused", b"")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason=reason) == 1
    )
    assert up.accepted == 0
    good = gateway.client_files("web")
    assert await in_thread(attempt, gateway.port, sni_for("billing"), good) == b"billing"


PEER_TD = "peer.consul"


def with_peer_bundle(gateway) -> MeshCA:
    """A site that also trusts the peer cluster ``peer.consul``: its trust domain in
    ``extra_trust_domains`` and its root, beside the mesh root, from ``file_certs``."""
    peer = MeshCA(PEER_TD)
    peer.write_root(gateway.root / "peer-root.pem")
    gateway.plugins = ["file_catalog", "builtin_ca", "file_certs", "intentions"]
    gateway.extra_site = '[sites.main.file_certs]\nroots = ["peer-root.pem"]\n'
    gateway.site_options = {"extra_trust_domains": [PEER_TD]}
    return peer


@pytest_twisted.ensureDeferred
async def test_a_peer_ca_cannot_mint_a_local_identity(gateway, upstreams):
    """Issue 16 §1, first attack: a certificate signed by the trusted *peer* CA whose URI
    SAN names the *local* trust domain's web is refused as ``wrong_trust_bundle`` (it
    does not chain to the local bundle) and never forwarded; the local CA's web is
    served, and the peer CA's own identity is a valid identity (its bundle vouches for
    it) that no local intention, not even ``*``, speaks for: denied, not refused."""
    up = upstreams(hello(b"billing"))
    peer = with_peer_bundle(gateway)
    setup_catalog(gateway, {"billing": up.port})  # * => billing allow
    await gateway.start()
    local_web = f"spiffe://{gateway.ca.trust_domain}/ns/default/dc/dc1/svc/web"
    forged = gateway.client_files("web", peer.leaf_with_uris([local_web]))
    refused = await in_thread(attempt, gateway.port, sni_for("billing"), forged)
    assert refused in (b"refused", b"")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="wrong_trust_bundle") == 1
    )
    assert up.accepted == 0
    local = gateway.client_files("web")
    assert await in_thread(attempt, gateway.port, sni_for("billing"), local) == b"billing"
    peer_web = gateway.client_files("peer-web", peer.leaf("web"))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), peer_web) == b""
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    records = gateway.access_records()
    assert records[0]["close_cause"] == "identity:wrong_trust_bundle"
    assert [r["source"] for r in records[1:]] == [
        local_web,
        f"spiffe://{PEER_TD}/ns/default/dc/dc1/svc/web",
    ]
    assert [r["close_cause"] for r in records[1:]] == ["completed", "denied"]
    assert up.accepted == 1


@pytest_twisted.ensureDeferred
async def test_a_peer_identity_never_matches_a_local_intention(gateway, upstreams):
    """Issue 16 §1, second attack: with ``web => billing allow`` and the default policy
    deny, the peer cluster's web (a valid identity of a trusted trust domain) is not
    the local web: no local intention matches it, so it is denied and counted, while
    the local web is served."""
    up = upstreams(hello(b"billing"))
    peer = with_peer_bundle(gateway)
    setup_catalog(gateway, {"billing": up.port}, [intentions("billing", ("web", "allow"))])
    await gateway.start()
    peer_web = gateway.client_files("peer-web", peer.leaf("web"))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), peer_web) == b""
    await gateway.wait_for(
        lambda: gateway.metric("tgw_downstream_rejected_total", reason="denied") == 1
    )
    assert up.accepted == 0
    local = gateway.client_files("web")
    assert await in_thread(attempt, gateway.port, sni_for("billing"), local) == b"billing"
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    denied, allowed = gateway.access_records()
    assert denied["source"] == f"spiffe://{PEER_TD}/ns/default/dc/dc1/svc/web"
    assert denied["decision"] == "deny" and denied["close_cause"] == "denied"
    assert allowed["decision"] == "allow" and allowed["engine"] == "intentions"
