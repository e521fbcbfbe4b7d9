"""Namespaces and partitions kept end to end with the Consul stack (issue 17 item 3): a
service linked in namespace finance is routed under its own SNI, its leaf and its
intentions are read with ?ns=finance, its leaf carries finance's SPIFFE ID, and an
intention source without a namespace is finance's (Consul's normalize()). Runs against
the Consul double (gwcore/testing/consul.py), which answers per namespace as an
Enterprise agent does."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from gwcore.contract import pki
from gwcore.policy.model import ServiceName
from gwcore.policy.sni import service_sni
from gwcore.testing import TRUST_DOMAIN, MeshCA
from gwcore.testing.consul import ConsulDouble, find
from tests.harness import DC, GATEWAY, hello, in_thread, peer_uris, request, tls_connect
from tests.plugins.test_consul_gateway import ConsulGateway


@pytest_twisted.ensureDeferred
async def test_a_service_in_another_namespace_is_served_with_its_own_identity(
    tmp_path: Path, upstreams
):
    """Uses the Consul double. finance/billing: routed at its namespaced SNI, served with
    .../ns/finance/.../svc/billing, reachable by finance/web (the intention names web
    without a namespace), refused to default/web; every request for it names ns."""
    consul = ConsulDouble(reactor, jitter=False)
    await consul.start()
    up = upstreams(hello(b"finance-billing"))
    consul.register(
        {"Node": "ext-billing", "Address": "127.0.0.1",
         "Service": {"ID": "billing-1", "Service": "billing", "Port": up.port,
                     "Namespace": "finance"}}
    )  # fmt: skip
    consul.put_config(
        {"Kind": "service-intentions", "Name": "billing", "Namespace": "finance",
         "Sources": [{"Name": "web", "Action": "allow"}]}
    )  # fmt: skip
    consul.link(GATEWAY, {"Name": "billing", "Namespace": "finance"})
    gw = ConsulGateway(tmp_path / "gw", double=consul)
    gw.intentions_options = {"default_policy": "deny"}
    try:
        await gw.start()
        billing = ServiceName("billing", "finance")
        sni = service_sni(billing, DC, TRUST_DOMAIN)
        await gw.wait_for(lambda: sni in gw.routes())

        def client(namespace: str) -> tuple[Path, Path, Path]:
            leaf = consul.client_leaf("web", namespace=namespace)
            directory = gw.root / "clients"
            cert, key = MeshCA().write(directory, f"web-{namespace}", leaf)
            bundle = directory / "roots.pem"
            bundle.write_bytes(b"".join(pki.certificate_pem(r.cert) for r in consul.roots))
            return cert, key, bundle

        finance_web = client("finance")
        assert await in_thread(request, gw.port, sni, finance_web) == b"finance-billing"
        assert await in_thread(request, gw.port, sni, client("default")) == b""

        def served() -> list[str]:
            with tls_connect(gw.port, sni, *finance_web) as sock:
                return peer_uris(sock)

        uris = await in_thread(served)
        assert any("/ns/finance/" in u and u.endswith("/svc/billing") for u in uris)
        for prefix in ("/v1/health/service/billing", "/v1/agent/connect/ca/leaf/billing",
                       "/v1/connect/intentions/match"):  # fmt: skip
            assert all(r.args.get("ns") == ["finance"] for r in find(consul.requests, prefix)), (
                prefix
            )
    finally:
        await gw.stop()
        await consul.stop()
