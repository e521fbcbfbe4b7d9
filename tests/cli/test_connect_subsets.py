"""``tgw connect`` honours a service-resolver's ``DefaultSubset`` (as a Consul sidecar's
discovery chain does) and ``--subset``, so a local client can try subsets."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from gwcore.cli.connect import ConnectFactory, LeafSource, upstream_sni
from gwcore.policy.config import load_config
from gwcore.policy.model import ServiceName, SpiffeID
from gwcore.testing import TRUST_DOMAIN
from tests.harness import Gateway, in_thread, read_all, write_json
from tests.plugins.test_tgw_subsets import RESOLVER, sni, start


async def through_connect(gateway: Gateway, subset: str | None) -> tuple[str, bytes]:
    site = load_config(gateway.root / "tgw.toml").sites[0]
    name = upstream_sni(site, ServiceName("s2"), "dc1", TRUST_DOMAIN, subset)
    assert gateway.ca is not None
    leaf = gateway.ca.leaf("web")
    factory = ConnectFactory(
        TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port),
        LeafSource(lambda: (leaf, [gateway.ca.cert]), reactor.seconds),
        name,
        SpiffeID(TRUST_DOMAIN, "default", "dc1", "s2").uri,
        reactor,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def fetch() -> bytes:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
            return read_all(s)

    try:
        return name, await in_thread(fetch)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_connect_dials_the_default_subset_or_the_one_asked(gateway: Gateway, upstreams):
    """With DefaultSubset v2 the proxy dials v2's SNI and reaches the v2 instance;
    --subset v1 dials v1's; --subset '' the plain name; no resolver, the plain name."""
    await start(gateway, upstreams, v2_status="passing")
    write_json(gateway.catalog / "resolver.json", {**RESOLVER, "DefaultSubset": "v2"})
    assert await through_connect(gateway, None) == (sni("v2"), b"v2 here")
    assert await through_connect(gateway, "v1") == (sni("v1"), b"v1 here")
    assert (await through_connect(gateway, ""))[0] == sni()
    (gateway.catalog / "resolver.json").unlink()
    assert (await through_connect(gateway, None))[0] == sni()
