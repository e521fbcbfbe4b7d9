"""The Consul stack with a CA that signs through an intermediate (issue 17 item 7): the
gateway presents billing's leaf with the intermediate, so a client trusting only the
roots verifies it. Runs against the Consul double (gwcore/testing/consul.py) with
intermediate=True, whose leaves' CertPEM is leaf then intermediate, as Consul's."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from gwcore.contract import pki
from gwcore.testing.consul import ConsulDouble
from tests.harness import in_thread, peer_uris, request, sni_for, tls_connect
from tests.plugins.test_consul_gateway import ConsulGateway, serve


@pytest_twisted.ensureDeferred
async def test_leaves_signed_by_an_intermediate_are_served_with_their_chain(
    tmp_path: Path, upstreams
):
    """Uses the Consul double. The client (its own leaf also from the intermediate)
    reaches billing and sees billing's SPIFFE ID."""
    consul = ConsulDouble(reactor, jitter=False, intermediate=True)
    await consul.start()
    serve(consul, upstreams, "billing")
    gw = ConsulGateway(tmp_path / "gw", double=consul)
    try:
        await gw.start()
        files = gw.client("web")
        assert await in_thread(request, gw.port, sni_for("billing"), files) == b"billing"

        def served_uris() -> list[str]:
            with tls_connect(gw.port, sni_for("billing"), *files) as sock:
                return peer_uris(sock)

        uris = await in_thread(served_uris)
        assert any(u.endswith("/svc/billing") for u in uris)
        # The client verified against the roots only: the chain came from the gateway.
        bundle = pki.load_certificates(files[2].read_bytes())
        assert consul.active_root.intermediate is not None
        assert consul.active_root.intermediate[0] not in bundle
    finally:
        await gw.stop()
        await consul.stop()
