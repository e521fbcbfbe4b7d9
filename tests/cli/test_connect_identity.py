"""``tgw connect`` checks the gateway's SPIFFE identity, not only its chain: a gateway
whose certificate chains to the mesh CA but names another service gets no byte.

In process: ``ConnectFactory`` listens on loopback in the test's reactor and dials a
threaded TLS server (Python's ``ssl``) standing in for the gateway, with leaves from
one mesh CA (gwcore.testing.MeshCA).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString, wrapClientTLS

from gwcore.cli.connect import ConnectFactory, MeshClientTLS
from gwcore.policy.model import SpiffeID
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import Upstream, in_thread, sni_for


def fake_gateway(ca: MeshCA, presented: str, directory: Path) -> Upstream:
    """A TLS server presenting ``presented``'s mesh leaf, requiring a mesh client
    certificate; it echoes, and records in ``results`` what it received."""
    cert, key = ca.write(directory, presented, ca.leaf(presented))
    root = ca.write_root(directory / "root.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(root))
    ctx.verify_mode = ssl.CERT_REQUIRED

    def handle(sock: socket.socket, up: Upstream) -> None:
        received = bytearray()
        try:
            with ctx.wrap_socket(sock, server_side=True) as tls:
                while data := tls.recv(65536):
                    received += data
                    tls.sendall(data)
        except (ssl.SSLError, OSError):
            pass  # tgw connect cut the connection: what the refusal looks like here
        up.results.append(bytes(received))

    return Upstream(handle)


@pytest.mark.parametrize(("presented", "served"), [("billing", True), ("ldap", False)])
@pytest_twisted.ensureDeferred
async def test_connect_forwards_only_to_a_gateway_with_the_upstreams_identity(
    tmp_path, presented, served
):
    """Asked for billing, ``tgw connect`` relays through a gateway presenting billing's
    leaf; one presenting ldap's leaf from the same CA is closed before any client byte
    reaches it, and the local client is closed too."""
    ca = MeshCA(TRUST_DOMAIN)
    gw = fake_gateway(ca, presented, tmp_path)
    try:
        tls = MeshClientTLS(ca.leaf("web"), [ca.cert], sni_for("billing"))
        endpoint = wrapClientTLS(tls, clientFromString(reactor, f"tcp:127.0.0.1:{gw.port}"))
        expected = SpiffeID(TRUST_DOMAIN, "default", "dc1", "billing").uri
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            ConnectFactory(endpoint, expected)
        )
        try:

            def exchange() -> bytes:
                with socket.create_connection(
                    ("127.0.0.1", listening.getHost().port), timeout=10
                ) as sock:
                    sock.sendall(b"secret")
                    try:
                        return sock.recv(100)  # the echo, or b"" once tgw connect closes
                    except ConnectionResetError:
                        return b""

            got = await in_thread(exchange)
        finally:
            await listening.stopListening()
        if served:
            assert got == b"secret"
        else:
            assert got == b""
            await in_thread(gw.done.wait, 10)
            assert gw.results == [b""]  # the handshake happened, no byte followed it
    finally:
        gw.close()
