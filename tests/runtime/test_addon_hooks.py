"""Hooks plugin authors asked for (issue 21), through a real gateway on loopback: an
addon closes a live connection later with a reason; an addon reroutes a connection
from its ClientHello."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    echo,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    read_all,
    registration,
    request,
    sni_for,
    tls_connect,
    write_json,
)

CLOSER = """
live = []


def tgw_upstream_connected(event):
    live.append(event.conn)  # kept, and closed later by the test
"""


def hold(port: int, sni: str, files: tuple[Path, Path, Path], ready: threading.Event) -> bytes:
    """Connect, get one echo back, signal, then read until the gateway closes."""
    cert, key, root = files
    with tls_connect(port, sni, cert, key, root) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        ready.set()
        return read_all(sock)


@pytest_twisted.ensureDeferred
async def test_an_addon_closes_a_live_connection_later_with_a_reason(
    gateway, upstreams, tmp_path: Path
):
    """ConnectionInfo.close(reason), called outside any hook while bytes flow: the client
    sees the connection end, the record says addon_close with the reason, and it is
    counted in tgw_downstream_rejected_total{reason="addon_close"}."""
    up = upstreams(echo)
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / "closer.py").write_text(CLOSER)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "closer"]
    await gateway.start()
    ready = threading.Event()
    files = gateway.client_files("web")
    client = in_thread(hold, gateway.port, sni_for("billing"), files, ready)
    await gateway.wait_for(ready.is_set)
    [conn] = sys.modules[gateway.site.stack.pm.get_plugin("closer").__name__].live
    conn.close("quota used")
    conn.close("twice")  # the first cause stays
    assert await client == b""
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    [record] = gateway.access_records()
    assert (record["close_cause"], record["close_detail"]) == ("addon_close", "quota used")
    assert gateway.metric("tgw_downstream_rejected_total", reason="addon_close") == 1


REROUTE = """
from gwcore.policy.sni import service_sni
from gwcore.policy.model import ServiceName

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


def tgw_tls_clienthello(event):
    # A legacy client knows billing by an old name: route it to billing's mesh name.
    if event.sni == "billing.legacy.example":
        event.route_to(service_sni(ServiceName("billing"), "dc1", TRUST_DOMAIN))
"""


@pytest_twisted.ensureDeferred
async def test_an_addon_reroutes_a_connection_from_its_clienthello(
    gateway, upstreams, tmp_path: Path
):
    """A name with no route, rerouted by an addon in tgw_tls_clienthello, reaches the
    service it was rerouted to (certificate, destination and authorization of that
    route); the access record shows the service."""
    up = upstreams(hello(b"billing here"))
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / "reroute.py").write_text(REROUTE)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "reroute"]
    await gateway.start()
    files = gateway.client_files("web")
    reply = await in_thread(request, gateway.port, "billing.legacy.example", files)
    assert reply == b"billing here"
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    [record] = gateway.access_records()
    assert record["destination"] == "billing"


CLOSED = """
closed = []


def tgw_connection_closed(event):
    closed.append(event.record["close_cause"])
"""


@pytest_twisted.ensureDeferred
async def test_a_connection_refused_at_accept_gets_a_record_and_the_closed_event(
    gateway, upstreams, tmp_path: Path
):
    """Over max_connections, the refused connection is recorded in the access log and
    given to tgw_connection_closed like any other (close cause ``overflow``)."""
    up = upstreams(echo)
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / "closed.py").write_text(CLOSED)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "closed"]
    gateway.site_options = {"max_connections": 1}
    await gateway.start()
    ready = threading.Event()
    files = gateway.client_files("web")
    held = in_thread(hold, gateway.port, sni_for("billing"), files, ready)
    await gateway.wait_for(ready.is_set)
    refused = in_thread(request, gateway.port, sni_for("billing"), files)
    with pytest.raises((HandshakeRefusedError, OSError)):  # aborted at accept
        await refused
    closed = sys.modules[gateway.site.stack.pm.get_plugin("closed").__name__].closed
    await gateway.wait_for(lambda: "overflow" in closed)
    records = gateway.access_records()
    assert [r["close_cause"] for r in records] == ["overflow"]
    assert records[0]["client"].startswith("127.0.0.1:")
    [conn] = gateway.site.active
    conn.close("test over")
    await held


CHOOSER = """
import json
from pathlib import Path

PREFERRED = json.loads((Path(__file__).parent / "preferred.json").read_text())
offered = []


def tgw_choose_endpoint(event):
    offered.append(sorted(e.port for e in event.candidates))
    event.choose([e for e in event.candidates if e.port == PREFERRED])
"""


@pytest_twisted.ensureDeferred
async def test_an_addon_chooses_the_endpoint_among_the_candidates(
    gateway, upstreams, tmp_path: Path
):
    """tgw_choose_endpoint sees both healthy endpoints of billing and pins every
    connection to one of them, whatever the round-robin order would have been."""
    first, second = upstreams(hello(b"first")), upstreams(hello(b"second"))
    (tmp_path / "addons").mkdir(exist_ok=True)
    (tmp_path / "addons" / "chooser.py").write_text(CHOOSER)
    (tmp_path / "addons" / "preferred.json").write_text(str(second.port))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    regs = [registration("billing", first.port), registration("billing", second.port)]
    write_json(gateway.catalog / "regs.json", regs)
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "chooser"]
    await gateway.start()
    files = gateway.client_files("web")
    replies = [await in_thread(request, gateway.port, sni_for("billing"), files) for _ in "abc"]
    assert replies == [b"second"] * 3
    offered = sys.modules[gateway.site.stack.pm.get_plugin("chooser").__name__].offered
    assert offered == [sorted([first.port, second.port])] * 3
