"""A service that ends its stream first is read to its end once.

After the service's FIN the splice passes the end on to the client and releases the
flow-control pairing. Releasing used to resume reading on the service's socket as
well, which found the same end of stream a second time (an epoll registration, a
wake-up and a ``recv`` per connection, and a second ``readConnectionLost``).
"""

from __future__ import annotations

import pytest_twisted

from gwcore.net.splice import UpstreamProtocol
from tests.harness import hello, in_thread, request, sni_for
from tests.net.test_terminator import setup_catalog


@pytest_twisted.ensureDeferred
async def test_the_services_end_of_stream_is_read_once(gateway, upstreams, monkeypatch):
    """Three connections to a service that answers and closes first: every answer
    arrives whole, and each upstream connection hears its end of stream once."""
    up = upstreams(hello(b"the answer" * 1000))
    setup_catalog(gateway, {"billing": [up.port]})
    ends: list[int] = []
    original = UpstreamProtocol.readConnectionLost

    def counting(self):
        ends.append(id(self))
        return original(self)

    monkeypatch.setattr(UpstreamProtocol, "readConnectionLost", counting)
    await gateway.start()
    files = gateway.client_files("web")
    for _ in range(3):
        got = await in_thread(request, gateway.port, sni_for("billing"), files)
        assert got == b"the answer" * 1000
    await gateway.wait_for(lambda: len(gateway.access_records()) == 3)
    assert len(ends) == 3 and len(set(ends)) == 3, ends
