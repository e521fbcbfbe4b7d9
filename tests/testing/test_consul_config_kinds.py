"""The Consul double's ``/v1/config/proxy-defaults`` and ``/v1/config/mesh`` listings
block as Consul's do (config_entry.go: one index per kind): a blocking query returns
when an entry of *that* kind is written or deleted, with the write's index in
``X-Consul-Index``, and waits through writes of other kinds (issue 22)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from gwcore.net.consul import ConsulClient, ConsulSettings
from gwcore.testing.consul import ConsulDouble, wait_deferred

PROXY = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}


@pytest_twisted.ensureDeferred
async def test_a_kinds_listing_wakes_on_its_own_kind_only():
    """Uses the Consul double. A blocking read of proxy-defaults is not answered by a
    service-defaults write; it is by a proxy-defaults write (index = that write's) and
    by its delete; the mesh listing moves the same way on its own kind."""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    client = ConsulClient(reactor, ConsulSettings(address=double.address, wait=5.0, timeout=2.0))
    try:
        first = await client.get("c", "/v1/config/proxy-defaults")
        assert first.json() == [] and first.index >= 1
        pending = client.get("c", "/v1/config/proxy-defaults", index=first.index, wait=5.0)
        answered: list[object] = []
        pending.addCallback(lambda r: (answered.append(r), r)[1])
        double.put_config({"Kind": "service-defaults", "Name": "billing", "Protocol": "http"})
        await wait_deferred(reactor, 0.2)
        assert answered == []  # another kind's write does not answer it
        double.put_config(PROXY)
        answer = await pending
        assert answer.index == double.store.entry("proxy-defaults", "global")["ModifyIndex"]
        assert [e["Config"]["protocol"] for e in answer.json()] == ["http"]
        pending = client.get("c", "/v1/config/proxy-defaults", index=answer.index, wait=5.0)
        double.delete_config("proxy-defaults", "global")
        gone = await pending
        assert gone.json() == [] and gone.index > answer.index

        mesh = await client.get("c", "/v1/config/mesh")
        pending = client.get("c", "/v1/config/mesh", index=mesh.index, wait=5.0)
        double.put_config({"Kind": "mesh", "HTTP": {"SanitizeXForwardedClientCert": True}})
        written = await pending
        assert [e["Name"] for e in written.json()] == ["mesh"] and written.index > mesh.index
    finally:
        await client.close()
        await double.stop()
