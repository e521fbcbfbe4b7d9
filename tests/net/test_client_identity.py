"""Which client certificates are a service identity (issue 16), end to end: real TLS
clients (Python's ssl) over loopback against an in-process gateway."""

from __future__ import annotations

import datetime
import socket
import ssl
import time

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gwcore.contract import pki
from gwcore.plugins.builtin_ca import load_or_create_ca
from gwcore.testing import TRUST_DOMAIN as TRUST
from gwcore.testing import MeshCA
from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    read_all,
    registration,
    request,
    sleep,
    sni_for,
    write_json,
)
from tests.net.test_client_trust import ca_without_spiffe_uri


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


def with_peer_bundle(gateway, peer: MeshCA | None = None) -> MeshCA:
    """A site that also trusts the peer cluster ``peer.consul``: its trust domain in
    ``extra_trust_domains`` and its root as that domain's bundle, from ``file_certs``
    (``trust_bundles``); the mesh's own root comes from ``builtin_ca``."""
    peer = peer or MeshCA(PEER_TD)
    peer.write_root(gateway.root / "peer-root.pem")
    gateway.plugins = ["file_catalog", "builtin_ca", "file_certs", "intentions"]
    gateway.extra_site = (
        '[sites.main.file_certs]\npoll_interval = "0.05s"\n'
        f'[sites.main.file_certs.trust_bundles]\n"{PEER_TD}" = ["peer-root.pem"]\n'
    )
    gateway.site_options = {"extra_trust_domains": [PEER_TD]}
    return peer


@pytest_twisted.ensureDeferred
async def test_a_peer_root_without_spiffe_uri_cannot_mint_a_local_identity(gateway, upstreams):
    """Issue 16 §1, the outside review's repro: the peer's root has no spiffe:// URI
    SAN (as Vault's or cert-manager's often have) and is configured as peer.consul's
    bundle. A leaf it signed naming the *local* web is refused as
    ``wrong_trust_bundle`` (the root vouches for peer.consul only, whatever it says),
    never forwarded; its leaf naming the peer's web is a valid peer identity that the
    local ``* => billing`` intention does not speak for (denied); the local web is
    served."""
    up = upstreams(hello(b"billing"))
    cert, key = ca_without_spiffe_uri()
    peer = with_peer_bundle(gateway, MeshCA(PEER_TD, cert, key))
    setup_catalog(gateway, {"billing": up.port})  # * => billing allow
    await gateway.start()
    local_web = f"spiffe://{gateway.ca.trust_domain}/ns/default/dc/dc1/svc/web"
    forged = gateway.client_files("web", peer.leaf_with_uris([local_web]))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), forged) in (b"refused", b"")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="wrong_trust_bundle") == 1
    )
    assert up.accepted == 0
    peer_web = gateway.client_files("peer-web", peer.leaf("web"))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), peer_web) == b""
    local = gateway.client_files("web")
    assert await in_thread(attempt, gateway.port, sni_for("billing"), local) == b"billing"
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    records = gateway.access_records()
    assert [(r["source"], r["close_cause"]) for r in records[1:]] == [
        (f"spiffe://{PEER_TD}/ns/default/dc/dc1/svc/web", "denied"),
        (local_web, "completed"),
    ]
    assert records[0]["close_cause"] == "identity:wrong_trust_bundle"
    assert up.accepted == 1


@pytest_twisted.ensureDeferred
async def test_a_peer_bundle_root_naming_the_local_domain_is_refused_at_load(gateway):
    """A root configured as the peer's bundle whose spiffe:// URI SAN names the local
    trust domain (here: the mesh's own root, listed by mistake or by an attacker with
    write access to one config line) is a config error naming the key and the file:
    the gateway does not start."""
    with_peer_bundle(gateway, MeshCA(PEER_TD, *load_or_create_ca(gateway.root / "ca", TRUST)))
    with pytest.raises(AssertionError) as refused:
        await gateway.start()
    text = str(refused.value)
    assert 'sites.main.file_certs.trust_bundles."peer.consul"' in text
    assert str(gateway.root / "peer-root.pem") in text
    assert "names trust domain" in text and TRUST in text


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


@pytest_twisted.ensureDeferred
async def test_a_reload_with_a_peer_bundle_naming_the_local_domain_keeps_the_bundles(
    gateway, upstreams
):
    """A SIGHUP reload that lists the mesh's own root (it names the local trust
    domain) as peer.consul's bundle is rejected with one line naming the key: the
    running bundles stay as they were, per domain, and the peer's client is still
    served."""
    from twisted.logger import formatEvent, globalLogPublisher

    up = upstreams(hello(b"billing"))
    peer = with_peer_bundle(gateway)
    gateway.site_options = {**gateway.site_options, "default_policy": "allow"}
    setup_catalog(gateway, {"billing": up.port}, [])
    await gateway.start()
    before = dict(gateway.site.current()[1].trust.roots)
    gateway.ca.write_root(gateway.root / "mesh-root.pem")
    gateway.extra_site = gateway.extra_site.replace('["peer-root.pem"]', '["mesh-root.pem"]')
    gateway.write_config()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gateway.service.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = "\n".join(formatEvent(e) for e in events)
    assert "reload rejected" in logged
    assert 'sites.main.file_certs.trust_bundles."peer.consul"' in logged
    assert dict(gateway.site.current()[1].trust.roots) == before
    assert before[PEER_TD] == (peer.cert,) and before[TRUST] == (gateway.ca.cert,)
    peer_web = gateway.client_files("peer-web", peer.leaf("web"))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), peer_web) == b"billing"


def resuming_client(files, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    cert, key, root = files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(root))
    ctx.load_cert_chain(str(cert), str(key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def call(
    ctx: ssl.SSLContext, port: int, sni: str, session: ssl.SSLSession | None = None
) -> tuple[bytes, bool, ssl.SSLSession | None]:
    """Handshake (offering ``session``), send, read to the end: (data, reused, session)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=sni, session=session) as sock:
        try:
            sock.sendall(b"x")
            data = read_all(sock)
        except (ssl.SSLError, ConnectionError):
            data = b""
        return data, sock.session_reused, sock.session


TLS_VERSIONS = [
    pytest.param(None, id="tls1.3"),
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
]


@pytest.mark.parametrize("max_version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_an_expired_leaf_cannot_resume_its_session(gateway, upstreams, max_version):
    """Issue 16 §2: a client whose leaf expired after its first connection offers that
    connection's real session (ticket) again: the session is resumed by OpenSSL, but
    the gateway verifies the certificate again and refuses it as ``expired_cert`` (as
    a full handshake would), never forwarding. Resuming before expiry is served."""
    up = upstreams(hello(b"billing"))
    setup_catalog(gateway, {"billing": up.port})
    await gateway.start()
    leaf = gateway.ca.leaf("web", valid_for=2)
    not_after = leaf.certificate.not_valid_after_utc.timestamp()
    ctx = resuming_client(gateway.client_files("web", leaf), max_version)
    sni = sni_for("billing")
    first, reused, session = await in_thread(call, ctx, gateway.port, sni)
    assert (first, reused) == (b"billing", False)
    again, reused, _ = await in_thread(call, ctx, gateway.port, sni, session)
    assert (again, reused) == (b"billing", True)
    await sleep(max(0.0, not_after + 1.05 - time.time()))  # OpenSSL compares whole seconds
    late, reused, _ = await in_thread(call, ctx, gateway.port, sni, session)
    assert (late, reused) == (b"", True)
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="expired_cert") == 1
    )
    assert up.accepted == 2
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    assert gateway.access_records()[-1]["close_cause"] == "identity:expired_cert"


@pytest.mark.parametrize(
    ("options", "lifetime"),
    [pytest.param({}, 3600, id="default"), pytest.param({"session_lifetime": "5m"}, 300, id="5m")],
)
@pytest_twisted.ensureDeferred
async def test_sessions_live_at_most_session_lifetime(gateway, upstreams, options, lifetime):
    """The lifetime of the session a client is given (TLS 1.3 ticket_lifetime hint) is
    ``session_lifetime``: one hour by default (OpenSSL's own default is two)."""
    up = upstreams(hello(b"billing"))
    setup_catalog(gateway, {"billing": up.port})
    gateway.site_options = options
    await gateway.start()
    ctx = resuming_client(gateway.client_files("web"))
    data, _, session = await in_thread(call, ctx, gateway.port, sni_for("billing"))
    assert data == b"billing" and session is not None
    assert session.ticket_lifetime_hint == lifetime


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        pytest.param("same", b"billing", id="same-sni"),
        pytest.param(None, b"", id="second-without-sni"),
        pytest.param("payments", b"payments", id="second-names-payments"),
        pytest.param("nowhere.example", b"", id="second-unknown-sni"),
    ],
)
@pytest.mark.filterwarnings("ignore:The asyncore module is deprecated:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_after_hello_retry_the_second_client_hello_decides(
    gateway, upstreams, second, expected
):
    """Issue 16 §6: a TLS 1.3 client whose only key share the server cannot use gets a
    HelloRetryRequest and sends a second ClientHello. Its server name — not the
    first's — decides: the same name is served, another route is served as that
    route, and none or an unknown one is refused (no route left from the first)."""
    from tests.hrr_client import HrrClient

    billing, payments = upstreams(hello(b"billing")), upstreams(hello(b"payments"))
    setup_catalog(gateway, {"billing": billing.port, "payments": payments.port})
    await gateway.start()
    client = HrrClient(gateway.client_files("web"))
    second_sni = sni_for("billing") if second == "same" else second
    if second == "payments":
        second_sni = sni_for("payments")
    got = await in_thread(client.call, gateway.port, sni_for("billing"), second_sni)
    assert len(client.hellos) == 2  # there was a HelloRetryRequest
    await sleep(0.3)
    assert got == expected, (
        client.error,
        [(r["close_cause"], r.get("sni")) for r in gateway.access_records()],
    )
    if not expected:
        assert billing.accepted == 0 and payments.accepted == 0


@pytest.mark.parametrize("max_version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_a_session_resumes_only_under_the_sni_it_was_made_for(
    gateway, upstreams, max_version
):
    """Issue 16 §6: a client offers its billing session (TLS 1.2 session ticket, or
    TLS 1.3 ticket) in a ClientHello naming payments. It gets a full handshake routed
    and logged by the name it sends now (payments) — in TLS 1.2 OpenSSL would have
    resumed and reported the session's old name. Offered to billing, it resumes."""
    billing, payments = upstreams(hello(b"billing")), upstreams(hello(b"payments"))
    setup_catalog(gateway, {"billing": billing.port, "payments": payments.port})
    await gateway.start()
    ctx = resuming_client(gateway.client_files("web"), max_version)
    first, reused, session = await in_thread(call, ctx, gateway.port, sni_for("billing"))
    assert (first, reused) == (b"billing", False)
    other, reused, _ = await in_thread(call, ctx, gateway.port, sni_for("payments"), session)
    assert (other, reused) == (b"payments", False)
    same, reused, _ = await in_thread(call, ctx, gateway.port, sni_for("billing"), session)
    assert (same, reused) == (b"billing", True)
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    records = gateway.access_records()
    assert [(r["sni"], r["destination"]) for r in records] == [
        (sni_for("billing"), "billing"),
        (sni_for("payments"), "payments"),
        (sni_for("billing"), "billing"),
    ]


def intermediate_ca(root: MeshCA) -> MeshCA:
    """A CA signed by ``root`` (as a Consul secondary datacenter's, or Vault's, is)."""
    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()), False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{root.trust_domain}")]
            ),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )
    return MeshCA(root.trust_domain, cert, key)


@pytest.mark.parametrize("max_version", TLS_VERSIONS)
@pytest_twisted.ensureDeferred
async def test_a_leaf_from_an_intermediate_resumes(gateway, upstreams, max_version):
    """A resumed session carries only the client's leaf, not the intermediate it sent
    in the full handshake; the gateway remembers the verified path, so the leaf is
    verified again on resumption and served (not refused for a missing issuer)."""
    up = upstreams(hello(b"billing"))
    setup_catalog(gateway, {"billing": up.port})
    await gateway.start()
    leaf = intermediate_ca(gateway.ca).leaf("web")
    assert len(leaf.chain) == 2  # the client sends leaf and intermediate
    ctx = resuming_client(gateway.client_files("web", leaf), max_version)
    first, reused, session = await in_thread(call, ctx, gateway.port, sni_for("billing"))
    assert (first, reused) == (b"billing", False)
    again, reused, _ = await in_thread(call, ctx, gateway.port, sni_for("billing"), session)
    assert (again, reused) == (b"billing", True)
    assert up.accepted == 2


ADDON_VETO_PAYMENTS = """
class VetoPayments:
    name = "veto-payments"

    def tgw_tls_clienthello(self, event):
        if event.sni and event.sni.startswith("payments."):
            event.veto("payments is closed")

addons = [VetoPayments()]
"""


@pytest.mark.filterwarnings("ignore:The asyncore module is deprecated:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_an_addon_veto_of_the_second_client_hello_refuses(gateway, upstreams):
    """After a HelloRetryRequest, an addon's veto of the second ClientHello refuses the
    handshake (``addon_veto``), even though the first hello named an allowed route."""
    from tests.hrr_client import HrrClient

    (gateway.root / "addons").mkdir(parents=True)
    (gateway.root / "addons" / "vetopay.py").write_text(ADDON_VETO_PAYMENTS)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "vetopay"]
    billing, payments = upstreams(hello(b"billing")), upstreams(hello(b"payments"))
    setup_catalog(gateway, {"billing": billing.port, "payments": payments.port})
    await gateway.start()
    client = HrrClient(gateway.client_files("web"))
    got = await in_thread(client.call, gateway.port, sni_for("billing"), sni_for("payments"))
    assert len(client.hellos) == 2 and got == b""
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="addon_veto") == 1
    )
    assert billing.accepted == 0 and payments.accepted == 0


@pytest_twisted.ensureDeferred
async def test_a_session_does_not_outlive_the_removal_of_its_root(gateway, upstreams):
    """After the peer's root is replaced (a root rotation that drops the old root), a
    client of the old root offering its session is not served: the site's contexts,
    ticket keys included, are replaced with the roots, and a resumption would be
    verified against the current bundle anyway. Refused as ``untrusted_ca``. The new
    root is the peer's bundle, the local one unchanged."""
    up = upstreams(hello(b"billing"))
    peer = with_peer_bundle(gateway)
    gateway.site_options = {**gateway.site_options, "default_policy": "allow"}
    setup_catalog(gateway, {"billing": up.port}, [])
    await gateway.start()
    ctx = resuming_client(gateway.client_files("peer-web", peer.leaf("web")))
    sni = sni_for("billing")
    first, _, session = await in_thread(call, ctx, gateway.port, sni)
    again, reused, _ = await in_thread(call, ctx, gateway.port, sni, session)
    assert (first, again, reused) == (b"billing", b"billing", True)
    old_root = peer.cert
    rotated = MeshCA(PEER_TD)
    rotated.write_root(gateway.root / "peer-root.pem")
    await gateway.wait_for(lambda: old_root not in gateway.site.trust_roots())
    bundles = gateway.site.current()[1].trust.roots
    assert bundles[PEER_TD] == (rotated.cert,), "the rotated root stays the peer's"
    assert bundles[TRUST] == (gateway.ca.cert,)
    late, _, _ = await in_thread(call, ctx, gateway.port, sni, session)
    assert late == b""
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason="untrusted_ca") == 1
    )
    assert up.accepted == 2
