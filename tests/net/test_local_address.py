"""Local addresses read only when needed (issue 28): gwcore.net.fasttcp's getHost over
real loopback sockets, and a terminated connection nobody records.

Twisted answers ``getHost`` with a ``getsockname`` system call each time. A connection
accepted on a listener bound to one address has that address as its own; any other
asks once and keeps the answer, and reads it as its socket closes only when its
``keep_host`` says a record will want it.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted

from gwcore.net import fasttcp
from tests.harness import hello, in_thread, request, sni_for
from tests.net.test_fasttcp import pair
from tests.net.test_terminator import setup_catalog


def count_getsockname(monkeypatch) -> list[int]:
    """File descriptors Python code asked ``getsockname`` for (CPython's own check in
    ``accept`` is C code and not counted)."""
    calls: list[int] = []
    original = socket.socket.getsockname

    def counting(self):
        calls.append(self.fileno())
        return original(self)

    monkeypatch.setattr(socket.socket, "getsockname", counting)
    return calls


@pytest_twisted.ensureDeferred
async def test_a_connection_on_a_one_address_listener_has_its_address_without_asking(
    monkeypatch,
):
    """The listener is bound to 127.0.0.1: an accepted connection's getHost is the
    listener's address, read by no system call, also after the connection closed."""
    _client, server, port = await pair()
    listening = port.getHost().port
    calls = count_getsockname(monkeypatch)
    host = server.transport.getHost()
    assert (host.host, host.port) == ("127.0.0.1", listening)
    server.transport.loseConnection()
    await server.lost
    assert server.transport.getHost() == host
    assert calls == []
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_any_other_address_is_asked_once_and_kept_when_a_record_wants_it(monkeypatch):
    """With no one address to take it from (as for a wildcard listener) and for an
    outgoing connection: one getsockname on first use, none after; a connection whose
    keep_host says yes reads it before its socket closes, one that says no never."""
    client, server, port = await pair()
    port._bound = None  # as a listener on 0.0.0.0 would be (tests bind loopback only)
    listening = port.getHost().port
    calls = count_getsockname(monkeypatch)
    assert client.transport.getHost() == client.transport.getHost()
    assert len(calls) == 1
    fasttcp.keep_local_address(server.transport, lambda: True)
    fasttcp.keep_local_address(client.transport, lambda: False)
    fasttcp.lose_connection(server.transport)
    await server.lost
    await client.lost
    assert len(calls) == 2  # the server's, as it closed; the client's was known
    host = server.transport.getHost()
    assert (host.host, host.port) == ("127.0.0.1", listening)
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_unrecorded_connection_never_reads_its_addresses(monkeypatch):
    """The record is what needs them: without one, nothing asks for them at close."""
    client, server, port = await pair()
    port._bound = None
    calls = count_getsockname(monkeypatch)
    fasttcp.keep_local_address(server.transport, lambda: False)
    fasttcp.lose_connection(server.transport)
    await server.lost
    await client.lost
    assert calls == []
    with pytest.raises(AttributeError):
        server.transport.getHost()  # never read, and the socket is gone
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_spliced_connection_nobody_records_asks_for_no_address(
    gateway, upstreams, monkeypatch
):
    """No access log and no tgw_connection_closed listener: a terminated, authorized and
    spliced connection makes no getsockname call (it made three: at accept, for the
    authorization request, and for the upstream), and the answer arrives whole."""
    gateway.access_log = ""
    up = upstreams(hello(b"the answer" * 100))
    setup_catalog(gateway, {"billing": [up.port]})
    await gateway.start()
    files = gateway.client_files("web")
    port = gateway.port
    await in_thread(request, port, sni_for("billing"), files)  # warm
    await gateway.wait_for(lambda: not gateway.site.acceptor.active)
    calls = count_getsockname(monkeypatch)
    for _ in range(2):
        got = await in_thread(request, port, sni_for("billing"), files)
        assert got == b"the answer" * 100
    await gateway.wait_for(lambda: not gateway.site.acceptor.active)
    assert calls == []
