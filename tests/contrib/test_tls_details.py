"""contrib/addons/tls_details.py: the shipped example addon works as documented."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.harness import (
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)

ADDONS = Path(__file__).resolve().parents[2] / "contrib" / "addons"


@pytest_twisted.ensureDeferred
async def test_access_record_carries_tls_version_and_cipher(gateway, upstreams):
    """Named in the stack, the addon annotates every forwarded connection's record."""
    up = upstreams(hello(b"ok"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugin_paths = [str(ADDONS)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "tls_details"]
    await gateway.start()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b"ok"
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    annotations = gateway.access_records()[0]["annotations"]
    assert annotations["tls_version"] == "TLSv1.3"
    assert annotations["cipher"]
