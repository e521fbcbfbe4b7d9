"""The mesh-gateway hop end to end on 127.0.0.1: a terminating gateway in dc1 authorizes
``web``, then reaches a service in dc2 through mesh gateways as *itself*, and dc2's
terminating gateway authorizes that identity with dc2's intentions."""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest
import pytest_twisted

from gwcore.plugins.mesh_hop import parse_address, read_settings
from gwcore.testing import TRUST_DOMAIN, site_config
from tests.harness import (
    Upstream,
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    peer_uris,
    read_all,
    sleep,
    sni_for,
    tls_connect,
)
from tests.multidc import (
    Federation,
    federation,
    gateway_instance,
    service_in,
    settle,
    spiffe,
)

__all__ = ["federation"]

BODY = b"ledger of dc2\n" * 5000


async def dc2(fed: Federation, up: Upstream, allow_dc1_gateway: bool = True):
    """dc2: its terminating gateway (fronting ``billing``) behind its mesh gateway."""
    action = "allow" if allow_dc1_gateway else "deny"
    tgw2 = await fed.start(
        "tgw-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            service_in("billing", up.port, "dc2"),
            intentions("billing", ("tgw-dc1", action)),
        ],
    )
    mesh2 = await fed.start(
        "mesh-dc2",
        "dc2",
        [
            gateway_entry("billing", name="tgw-dc2"),
            gateway_instance("terminating-gateway", "tgw-dc2", tgw2.port, "dc2"),
        ],
        role="mesh",
    )
    return tgw2, mesh2


async def dc1_gateway(fed: Federation, mesh_gateways: list[dict], web: str = "allow", mode=None):
    """dc1's terminating gateway: ``billing`` is registered only in dc2 (at a port nobody
    listens on, so a direct dial would fail), reached through the given mesh gateways."""
    extra = f'[sites.tgw-dc1.mesh_hop]\nmode = "{mode}"' if mode else ""
    return await fed.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            service_in("billing", free_port(), "dc2"),
            *mesh_gateways,
            intentions("billing", ("web", web)),
        ],
        extra=extra,
    )


def call(port: int, files, sni: str) -> tuple[list[str], bytes]:
    cert, key, root = files
    with tls_connect(port, sni, cert, key, root) as sock:
        uris = peer_uris(sock)
        sock.sendall(b"hi")
        return uris, read_all(sock)


@pytest.mark.parametrize("mode", ["remote", "local"])
@pytest_twisted.ensureDeferred
async def test_hop_reaches_a_service_in_dc2_as_the_dc1_gateway(
    federation: Federation, upstreams, mode: str
):
    """client -> tgw (dc1, authorizes web) -> hop -> [mesh dc1 ->] mesh dc2 -> tgw (dc2,
    authorizes tgw-dc1) -> service. The client sees dc1's leaf for billing; dc2 sees the
    dc1 gateway's own identity; the service's bytes arrive unchanged."""
    up = upstreams(hello(BODY))
    tgw2, mesh2 = await dc2(federation, up)
    gateways = [gateway_instance("mesh-gateway", "mesh-gateway", mesh2.port, "dc2")]
    if mode == "local":
        mesh1 = await federation.start("mesh-dc1", "dc1", gateways, role="mesh")
        gateways = [gateway_instance("mesh-gateway", "mesh-gateway", mesh1.port, "dc1")]
    tgw1 = await dc1_gateway(federation, gateways, mode=mode)
    destination = tgw1.site.catalog_view().destinations[0]
    assert (destination.name, destination.datacenter) == ("billing", "dc2")

    uris, answer = await in_thread(
        call, tgw1.port, federation.client_files("web"), sni_for("billing")
    )
    assert uris == [spiffe("billing", "dc1")]
    assert answer == BODY
    assert up.accepted == 1
    await settle(*federation.gateways)
    (far,) = tgw2.access_records()
    assert far["source"] == spiffe("tgw-dc1", "dc1") and far["decision"] == "allow"
    assert mesh2.metric("tgw_mesh_connections_total", datacenter="dc2", via="local") == 1
    near = tgw1.access_records()[0]
    assert near["source"] == spiffe("web", "dc1") and near["close_cause"] == "completed"


@pytest_twisted.ensureDeferred
async def test_dc2_intention_denying_the_dc1_gateway_refuses(federation: Federation, upstreams):
    """dc2's own intentions apply to the hop: denying tgw-dc1 there closes the client's
    connection with nothing sent, and the service is never reached."""
    up = upstreams(hello(BODY))
    tgw2, mesh2 = await dc2(federation, up, allow_dc1_gateway=False)
    tgw1 = await dc1_gateway(
        federation,
        [gateway_instance("mesh-gateway", "mesh-gateway", mesh2.port, "dc2")],
        mode="remote",
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    assert up.accepted == 0
    await settle(*federation.gateways)
    labels = {"service": "billing", "engine": "intentions", "decision": "deny"}
    assert tgw2.metric("tgw_authz_decisions_total", **labels) == 1


@pytest_twisted.ensureDeferred
async def test_dc1_intention_denying_web_refuses_before_any_cross_dc_connection(
    federation: Federation, upstreams
):
    """The local decision comes first: a deny in dc1 opens nothing towards dc2."""
    up = upstreams(hello(BODY))
    tgw2, mesh2 = await dc2(federation, up)
    tgw1 = await dc1_gateway(
        federation,
        [gateway_instance("mesh-gateway", "mesh-gateway", mesh2.port, "dc2")],
        web="deny",
        mode="remote",
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    assert mesh2.metric("tgw_downstream_accepted_total") == 0
    assert tgw2.metric("tgw_downstream_accepted_total") == 0


def impostor(federation: Federation, seen: list, ca=None, leaf=None):
    """A TLS server posing as dc2's mesh gateway path, presenting ``ledger``'s leaf (a
    valid certificate of the same CA, the wrong identity) unless given another ``leaf``
    of ``ca``. Records the hop's SNI, the client identity it received (if any) and how
    its handshake ended."""
    ca = ca or federation.ca
    leaf = leaf or federation.ca.leaf("ledger", "dc2")
    cert, key = ca.write(federation.root / "impostor", "ledger", leaf)
    root = federation.ca.write_root(federation.root / "impostor" / "root.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(root))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.sni_callback = lambda conn, name, _: seen.append(("sni", name)) and None

    def handle(sock: socket.socket, up: Upstream) -> None:
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            seen.append(("error", str(e)))
            return
        with tls:
            der = tls.getpeercert(binary_form=True)
            from cryptography import x509

            from gwcore.contract import pki

            seen.append(("client", pki.uri_sans(x509.load_der_x509_certificate(der))))
            with contextlib.suppress(OSError, ssl.SSLError):
                tls.recv(1)

    return handle


@pytest_twisted.ensureDeferred
async def test_far_end_with_the_wrong_identity_is_refused_and_counted(
    federation: Federation, upstreams
):
    """The hop sends the remote SNI and accepts only the destination's SPIFFE ID: a far
    end presenting another (validly signed) identity is refused inside the handshake with
    a bad_certificate alert, before the gateway's own certificate is sent; counted as
    wrong_identity, and the client's connection closed with nothing sent."""
    seen: list = []
    fake = upstreams(impostor(federation, seen))
    tgw1 = await dc1_gateway(
        federation,
        [gateway_instance("mesh-gateway", "mesh-gateway", fake.port, "dc2")],
        mode="remote",
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    await settle(tgw1)
    for _ in range(250):  # the impostor's thread records its end of the handshake
        if len(seen) >= 2:
            break
        await sleep(0.02)
    assert seen[0] == ("sni", f"billing.default.dc2.internal.{TRUST_DOMAIN}")
    # The impostor never received the dc1 gateway's certificate: its handshake ended with
    # our alert (TLS 1.3 sends the client certificate after the server's Finished).
    assert [kind for kind, _ in seen[1:]] == ["error"], seen
    assert "BAD_CERTIFICATE" in seen[1][1].upper(), seen
    labels = {"datacenter": "dc2", "reason": "wrong_identity"}
    assert tgw1.metric("tgw_mesh_hop_failures_total", **labels) == 1
    (record,) = tgw1.access_records()
    assert record["close_cause"] == "upstream_unavailable"
    assert "do not include " + spiffe("billing", "dc2") in record["close_detail"]


@pytest_twisted.ensureDeferred
async def test_a_peer_bundle_cannot_vouch_for_the_far_end(federation: Federation, upstreams):
    """Issue 16 §1 on the hop: the site also trusts peer.consul, whose root (no
    spiffe:// URI SAN) is that domain's bundle. A far end presenting the right
    identity (billing in dc2, local trust domain) on a leaf that peer CA signed is
    refused inside the handshake: mesh gateways are verified against the site's own
    trust domain's bundle only; the gateway's certificate is never sent."""
    from gwcore.testing import MeshCA
    from tests.net.test_client_trust import ca_without_spiffe_uri

    peer = MeshCA("peer.consul", *ca_without_spiffe_uri())
    peer_root = peer.write_root(federation.root / "peer-root.pem")
    seen: list = []
    forged = peer.leaf_with_uris([spiffe("billing", "dc2")])
    fake = upstreams(impostor(federation, seen, peer, forged))
    tgw1 = await federation.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            service_in("billing", free_port(), "dc2"),
            gateway_instance("mesh-gateway", "mesh-gateway", fake.port, "dc2"),
            intentions("billing", ("web", "allow")),
        ],
        plugins=["file_catalog", "builtin_ca", "file_certs", "intentions"],
        options={"extra_trust_domains": ["peer.consul"]},
        extra=(
            '[sites.tgw-dc1.mesh_hop]\nmode = "remote"\n'
            f'[sites.tgw-dc1.file_certs.trust_bundles]\n"peer.consul" = ["{peer_root}"]\n'
        ),
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    await settle(tgw1)
    for _ in range(250):
        if len(seen) >= 2:
            break
        await sleep(0.02)
    assert [kind for kind, _ in seen[1:]] == ["error"], seen
    (record,) = tgw1.access_records()
    assert record["close_cause"] == "upstream_unavailable"


@pytest_twisted.ensureDeferred
async def test_no_mesh_gateway_for_the_datacenter_fails_closed(federation: Federation, upstreams):
    """Without a mesh gateway the hop (mode local) refuses; it never dials the remote
    instance itself."""
    up = upstreams(hello(BODY))
    tgw1 = await federation.start(
        "tgw-dc1",
        "dc1",
        [
            gateway_entry("billing", name="tgw-dc1"),
            service_in("billing", up.port, "dc2"),  # reachable, but in another datacenter
            intentions("billing", ("web", "allow")),
        ],
        extra='[sites.tgw-dc1.mesh_hop]\nmode = "local"',
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    assert up.accepted == 0
    labels = {"datacenter": "dc2", "reason": "no_mesh_gateway"}
    assert tgw1.metric("tgw_mesh_hop_failures_total", **labels) == 1
    assert tgw1.metric("tgw_upstream_unavailable_total", service="billing") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:443", ("::1", 443)),
        ("mgw.dc2.example:8443", ("mgw.dc2.example", 8443)),
        ("::1:443", None),
        ("host", None),
        ("host:0", None),
        ("host:70000", None),
        (":443", None),
    ],
)
def test_configured_gateway_addresses_parse(text, expected):
    assert parse_address(text) == expected


def test_settings_report_bad_mode_and_addresses(tmp_path):
    site = site_config(
        tmp_path,
        sections={"mesh_hop": {"mode": "sideways", "gateways": {"dc2": ["nope"], "dc3": 7}}},
    )
    settings, problems = read_settings(site)
    found = {(p.key, p.message.split(" ")[0]) for p in problems}
    assert ("sites.main.mesh_hop.mode", "must") in found
    assert ("sites.main.mesh_hop.gateways.dc2", "'nope'") in found
    assert ("sites.main.mesh_hop.gateways.dc3", "must") in found
    assert settings.mode == "none" and settings.gateways == ()


def test_configured_gateways_are_a_catalog_source_for_mesh_sites_too(tmp_path):
    """On a mesh site ``mode`` is refused (it never hops) but ``gateways`` is used."""
    site = site_config(
        tmp_path,
        role="mesh",
        sections={"mesh_hop": {"mode": "remote", "gateways": {"dc2": ["10.0.0.2:8443"]}}},
    )
    settings, problems = read_settings(site)
    assert [p.key for p in problems] == ["sites.main.mesh_hop.mode"]
    (entry,) = settings.gateways
    assert entry.datacenter == "dc2" and str(entry.endpoints[0]) == "10.0.0.2:8443"


@pytest_twisted.ensureDeferred
async def test_a_far_end_with_two_uri_sans_is_refused(federation: Federation, upstreams):
    """Issue 16 review F7: the far end presents a leaf of the mesh CA with the expected
    SPIFFE ID *and* another URI SAN: refused inside the handshake (``wrong_identity``),
    as a client leaf with two URI SANs is; nothing reaches the client."""
    seen: list = []
    two = federation.ca.leaf_with_uris([spiffe("billing", "dc2"), spiffe("ledger", "dc2")])
    fake = upstreams(impostor(federation, seen, federation.ca, two))
    tgw1 = await dc1_gateway(
        federation,
        [gateway_instance("mesh-gateway", "mesh-gateway", fake.port, "dc2")],
        mode="remote",
    )
    _, answer = await in_thread(call, tgw1.port, federation.client_files("web"), sni_for("billing"))
    assert answer == b""
    await settle(tgw1)
    labels = {"datacenter": "dc2", "reason": "wrong_identity"}
    assert tgw1.metric("tgw_mesh_hop_failures_total", **labels) == 1
    (record,) = tgw1.access_records()
    assert record["close_cause"] == "upstream_unavailable"
    assert "exactly one URI SAN" in record["close_detail"]
