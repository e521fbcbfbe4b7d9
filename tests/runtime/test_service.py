"""gwcore.runtime.service: reload keeps serving when a replacement site cannot start; the heap
is frozen after start-up and after each reload once the old sites have ended."""

from __future__ import annotations

import gc
import socket

import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    tls_connect,
    write_json,
)


@pytest_twisted.ensureDeferred
async def test_a_reload_whose_site_cannot_listen_is_rolled_back(gateway, upstreams):
    """The new listen endpoint is taken: the reload fails, is counted, and the old site
    listens again and serves."""
    up = upstreams(hello(b"ok"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    old_port = gateway.port
    files = gateway.client_files("web")
    assert await in_thread(request, old_port, sni_for("billing"), files) == b"ok"

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        config = gateway.root / "tgw.toml"
        text = config.read_text().replace(
            'listen = "tcp:0:interface=127.0.0.1"',
            f'listen = "tcp:{taken.getsockname()[1]}:interface=127.0.0.1"',
        )
        config.write_text(text)
        await gateway.service.reload()
    finally:
        taken.close()
    assert (
        gateway.service.metrics.registry.get_sample_value(
            "tgw_config_reloads_total", {"result": "failed"}
        )
        == 1
    )
    assert gateway.site.listening and gateway.port != 0
    assert await in_thread(request, gateway.port, sni_for("billing"), files) == b"ok"


@pytest_twisted.ensureDeferred
async def test_the_heap_is_frozen_after_start_and_again_once_replaced_sites_end(gateway, upstreams):
    """Start-up objects are exempt from cyclic GC; a reload unfreezes them (so the
    replaced site can be collected once it ends), stays unfrozen while that site drains
    a live connection, and freezes again after it has retired. Nothing is unfrozen by
    hand between start and the end of the drain."""
    up = upstreams()  # echo: the connection stays open until the client closes it
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.freeze_heap = True
    gc.unfreeze()  # a clean start: earlier tests may have frozen the heap
    try:
        await gateway.start()
        assert gc.get_freeze_count() > 0
        old_site = gateway.site
        cert, key, root = gateway.client_files("web")
        live = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
        await in_thread(live.sendall, b"hi")
        assert await in_thread(live.recv, 10) == b"hi"
        config = gateway.root / "tgw.toml"
        config.write_text(
            config.read_text().replace('handshake_timeout = "5s"', 'handshake_timeout = "6s"')
        )
        await gateway.service.reload()
        assert gateway.site is not old_site  # replaced; the old one drains the live client
        assert gateway.service._retiring == {old_site}
        assert gc.get_freeze_count() == 0  # unfrozen by the reload, not refrozen yet
        live.close()
        await gateway.wait_for(lambda: not gateway.service._retiring)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _hammer(port: int, files, stop, outcomes) -> None:
    """Requests in a loop until ``stop`` is set; each outcome recorded."""
    while not stop.is_set():
        try:
            outcomes.append(request(port, sni_for("billing"), files))
        except (OSError, HandshakeRefusedError) as e:
            outcomes.append(type(e).__name__)


@pytest_twisted.ensureDeferred
async def test_a_reload_replacing_a_site_on_the_same_endpoint_refuses_no_client(gateway, upstreams):
    """Three reloads that each replace the site (idle_timeout changed, same listen)
    while a client requests in a loop: every request is served; none is refused or
    reset (before, the old listener closed before the new one opened, and clients
    arriving in between got ECONNREFUSED, or a reset from the closed accept queue)."""
    import threading

    from tests.harness import sleep

    up = upstreams(hello(b"ok"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    port, files = gateway.port, gateway.client_files("web")
    stop, outcomes = threading.Event(), []
    hammer = in_thread(_hammer, port, files, stop, outcomes)
    try:
        for idle in ("59m", "58m", "57m"):
            first = gateway.site
            gateway.site_options["idle_timeout"] = idle
            gateway.write_config()
            await gateway.service.reload()
            assert gateway.site is not first and gateway.port == port
            await sleep(0.1)
    finally:
        stop.set()
        await hammer
    assert len(outcomes) >= 10 and set(outcomes) == {b"ok"}, sorted(set(map(str, outcomes)))
