"""Open WebSocket tunnels under a changed policy, their pool slots, an addon and a 101.

The gateway runs in-process (file catalog, builtin CA, intentions) with real TLS
clients holding mesh leaves, speaking WebSocket with wsproto, and a real WebSocket
service (wsproto, threads) on 127.0.0.1 port 0 (``tests/runtime/ws_support.py``).
Intentions are catalog files, rewritten as an operator would; the file watch turns
the change into the site's policy change, as for the L4 re-check.
"""

from __future__ import annotations

import socket
import threading

import pytest_twisted
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

from tests.harness import in_thread, intentions, write_json
from tests.runtime.l7_support import get, link, mesh_http
from tests.runtime.ws_support import WsClient, WsService

REVOKED = "tgw_downstream_rejected_total"


def requests_of(gateway) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


def only_under(gateway, prefix: str) -> None:
    """``web`` may reach ``billing`` under ``prefix`` only (default policy: deny)."""
    write_json(
        gateway.catalog / "ixn.json",
        {
            "Kind": "service-intentions",
            "Name": "billing",
            "Sources": [
                {
                    "Name": "web",
                    "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": prefix}}],
                }
            ],
        },
    )


def opened(gateway, target: str) -> WsClient:
    client = WsClient(gateway)
    client.sock.settimeout(10)  # a tunnel left open fails the test instead of hanging it
    answer, _ = client.handshake(target)
    assert isinstance(answer, AcceptConnection)
    client.send(TextMessage(data="before"))
    assert client.message() == "before"
    return client


def after_change(client: WsClient) -> object:
    """What the tunnel does with one more message: its echo, or None once closed."""
    try:
        client.send(TextMessage(data="after"))
        return client.message()
    except OSError:
        return None


@pytest_twisted.ensureDeferred
async def test_revoking_the_intention_closes_an_open_tunnel(gateway, upstreams):
    """After ``web allow`` becomes ``web deny`` the open tunnel is closed by the gateway
    (it carried messages before), counted as ``policy_revoked`` like an L4 connection;
    its request record keeps status 101 with ``error = "policy_revoked"`` and the
    deciding engine, and its connection's close cause is ``policy_revoked``."""
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    client = await in_thread(opened, gateway, "/ws/chat")
    try:
        write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "deny")))
        await gateway.wait_for(lambda: gateway.metric(REVOKED, reason="policy_revoked") == 1)
        assert await in_thread(after_change, client) is None
    finally:
        client.close()
    await gateway.wait_for(lambda: bool(requests_of(gateway)))
    (record,) = requests_of(gateway)
    assert record["status"] == 101 and record["error"] == "policy_revoked"
    assert record["decision"] == "deny" and record["engine"] == "intentions"
    await gateway.wait_for(
        lambda: any(r.get("close_cause") == "policy_revoked" for r in gateway.access_records())
    )


@pytest_twisted.ensureDeferred
async def test_a_policy_change_closes_only_the_tunnels_it_now_denies(gateway, upstreams):
    """Two tunnels of ``web``, at ``/ws/chat`` and ``/admin/feed``; the new intention
    allows ``/ws/`` only: the ``/admin`` tunnel is closed (one ``policy_revoked``), the
    ``/ws`` one keeps carrying messages, and a plain request under ``/admin`` is 403."""
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    chat = await in_thread(opened, gateway, "/ws/chat")
    admin = await in_thread(opened, gateway, "/admin/feed")
    try:
        only_under(gateway, "/ws/")
        await gateway.wait_for(lambda: gateway.metric(REVOKED, reason="policy_revoked") == 1)
        assert await in_thread(after_change, admin) is None
        assert await in_thread(after_change, chat) == "after"
    finally:
        chat.close()
        admin.close()

    def plain() -> int:
        c = mesh_http(gateway, "billing", "web")
        try:
            return get(c, "/admin/x")[0]
        finally:
            c.close()

    assert await in_thread(plain) == 403
    assert gateway.metric(REVOKED, reason="policy_revoked") == 1


class HeldWsService:
    """A WebSocket echo service (wsproto) that answers the upgrade's ``101`` only once
    ``release`` is set (``got_head`` says the request arrived)."""

    def __init__(self, upstreams) -> None:
        self.got_head = threading.Event()
        self.release = threading.Event()
        self.upstream = upstreams(self._serve)

    def _serve(self, sock: socket.socket, up) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            while data := sock.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        self.got_head.set()
                        self.release.wait(10)
                        sock.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        sock.sendall(ws.send(TextMessage(data=event.data)))
        except OSError:
            return


@pytest_twisted.ensureDeferred
async def test_a_101_arriving_after_a_revocation_opens_no_tunnel(gateway, upstreams):
    """The upgrade was allowed, then the intention was revoked while the service had not
    answered yet (the re-check found no tunnel to close): when the ``101`` arrives the
    tunnel is decided again under the policy of now and closed as ``policy_revoked``
    (the client may or may not see the ``101`` first) instead of carrying messages."""
    service = HeldWsService(upstreams)
    link(gateway, service.upstream.port, ("web", "allow"))
    await gateway.start()

    def run() -> object:
        client = WsClient(gateway)
        client.sock.settimeout(10)
        try:
            answer, _ = client.handshake("/ws/late")
            assert isinstance(answer, AcceptConnection)
            return after_change(client)
        except RemoteProtocolError:
            return None  # the close came before the whole 101 head
        finally:
            client.close()

    result = in_thread(run)
    await in_thread(service.got_head.wait, 10)
    epoch = gateway.site.recheck.epoch
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "deny")))
    await gateway.wait_for(lambda: gateway.site.recheck.epoch > epoch)  # re-check ran
    service.release.set()
    assert await result is None
    assert gateway.metric(REVOKED, reason="policy_revoked") == 1
    await gateway.wait_for(lambda: bool(requests_of(gateway)))
    assert requests_of(gateway)[0]["error"] == "policy_revoked"


@pytest_twisted.ensureDeferred
async def test_a_reload_to_default_deny_closes_the_replaced_sites_tunnels(gateway, upstreams):
    """No intentions engine, ``default_policy = "allow"``: a tunnel opens. A reload to
    ``default_policy = "deny"`` replaces the site: the old site's tunnel is decided again
    under the new site and closed as ``policy_revoked``."""
    service = WsService(upstreams)
    gateway.site_options["default_policy"] = "allow"
    gateway.plugins = ["file_catalog", "builtin_ca"]
    link(gateway, service.port)
    await gateway.start()
    client = await in_thread(opened, gateway, "/ws/chat")
    try:
        gateway.site_options["default_policy"] = "deny"
        gateway.write_config()
        await gateway.service.reload()
        await gateway.wait_for(lambda: gateway.metric(REVOKED, reason="policy_revoked") == 1)
        assert await in_thread(after_change, client) is None
    finally:
        client.close()
    await gateway.wait_for(lambda: bool(requests_of(gateway)))
    assert requests_of(gateway)[0]["error"] == "policy_revoked"


@pytest_twisted.ensureDeferred
async def test_open_tunnels_leave_their_pool_slots_to_plain_requests(gateway, upstreams):
    """With ``http_max_upstream_connections = 2`` and no queue, open tunnels do not
    hold the destination's two slots: a third tunnel opens, and a plain request is still
    served (200). When the tunnels end the pool holds no busy connection."""
    service = WsService(upstreams)
    gateway.site_options = {"http_max_upstream_connections": 2, "http_max_pending_requests": 0}
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    tunnels = [await in_thread(opened, gateway, "/ws/chat") for _ in range(3)]
    try:

        def plain() -> tuple[int, bytes]:
            c = mesh_http(gateway, "billing", "web")
            try:
                return get(c, "/x")[:2]
            finally:
                c.close()

        assert await in_thread(plain) == (200, b"plain")
    finally:
        for client in tunnels:
            client.close()
    await gateway.wait_for(lambda: len(requests_of(gateway)) == 4)
    (pool,) = gateway.site.l7.pools.values()
    assert not pool.busy and len(gateway.site.l7.tunnels) == 0


WS_STATUS_ADDON = """
def tgw_http_responseheaders(flow):
    if flow.request.path == "/ws/mod":
        flow.response.status = 200
"""


@pytest_twisted.ensureDeferred
async def test_an_addon_turning_a_101_into_200_gets_a_502_not_a_hang(gateway, upstreams, tmp_path):
    """An addon that changes the service's ``101`` to ``200`` in
    ``tgw_http_responseheaders``: the upstream connection has switched and can carry no
    HTTP response, so the client gets the addon-error 502 (complete, with its body) and
    the exchange's record says 502 with an ``addon_error``; nothing hangs."""
    addons = tmp_path / "ws-status"
    addons.mkdir()
    (addons / "wsstatus.py").write_text(WS_STATUS_ADDON)
    gateway.plugin_paths = [str(addons)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "wsstatus"]
    service = WsService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> tuple[object, bytes]:
        client = WsClient(gateway)
        client.sock.settimeout(5)  # the bug: a 200 head, then nothing
        try:
            return client.handshake("/ws/mod")
        finally:
            client.close()

    answer, _ = await in_thread(run)
    assert getattr(answer, "status_code", None) == 502
    await gateway.wait_for(lambda: bool(requests_of(gateway)))
    (record,) = requests_of(gateway)
    assert record["status"] == 502 and record["error"].startswith("addon_error")
