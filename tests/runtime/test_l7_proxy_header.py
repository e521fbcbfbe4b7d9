"""L7 with ``upstream_proxy_protocol``: a PROXY v2 header on each new upstream connection.

The gateway runs in-process (file catalog, builtin CA, intentions); real mesh mTLS
clients; the service is a real HTTP/1.1 server (h11, 127.0.0.1 port 0) that first
reads a PROXY v2 header on each connection (parsed with gwcore's own parser, which
the PROXY-protocol tests check against the specification's examples).
"""

from __future__ import annotations

import socket

import pytest_twisted

from gwcore.policy.proxy_protocol import TLV_SPIFFE_ID, parse
from tests.harness import in_thread
from tests.runtime.l7_support import HttpService, get, link, mesh_http


class ProxiedHttpService(HttpService):
    """An :class:`HttpService` behind a PROXY v2 header on every connection."""

    def __init__(self, upstreams) -> None:
        self.headers: list[tuple[tuple[str, int] | None, str]] = []
        super().__init__(upstreams)

    def _serve(self, sock: socket.socket, up) -> None:
        head = sock.recv(16, socket.MSG_WAITALL)
        length = int.from_bytes(head[14:16], "big")
        rest = sock.recv(length, socket.MSG_WAITALL) if length else b""
        header, used = parse(head + rest)
        assert header is not None and used == 16 + length, head
        self.headers.append((header.source, dict(header.tlvs)[TLV_SPIFFE_ID].decode()))
        super()._serve(sock, up)


@pytest_twisted.ensureDeferred
async def test_each_client_gets_its_own_upstream_connection_with_its_proxy_header(
    gateway, upstreams
):
    """Two clients, two keep-alive requests each: each client's requests share one
    upstream connection that began with a PROXY v2 header naming that client (address,
    port, SPIFFE ID); no client's requests ride on a connection naming another."""
    service = ProxiedHttpService(upstreams)
    link(gateway, service.port, ("web", "allow"), ("batch", "allow"))
    gateway.site_options["upstream_proxy_protocol"] = True
    await gateway.start()

    def run(source: str) -> tuple[int, list[int]]:
        conn = mesh_http(gateway, "billing", source)
        try:
            port = conn.sock.getsockname()[1]
            return port, [get(conn, f"/{source}/{i}")[0] for i in range(2)]
        finally:
            conn.close()

    web_port, web = await in_thread(run, "web")
    batch_port, batch = await in_thread(run, "batch")
    assert web == [200, 200] and batch == [200, 200]
    assert service.connections == 2
    assert len(service.headers) == 2
    (web_source, web_id), (batch_source, batch_id) = service.headers
    assert web_source == ("127.0.0.1", web_port) and web_id.endswith("/svc/web")
    assert batch_source == ("127.0.0.1", batch_port) and batch_id.endswith("/svc/batch")
    assert [r.target for r in service.requests] == ["/web/0", "/web/1", "/batch/0", "/batch/1"]
    # each client's private pool leaves with it (bounded: no pool per past client)
    await gateway.wait_for(lambda: not gateway.site.l7.pools)
