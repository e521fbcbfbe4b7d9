"""A running gateway's view of the L7 catalog inputs (issue 22): ``/routes`` shows each
route's protocol (service-defaults, else proxy-defaults, else tcp), whether it is served
L7, and the ``mesh`` entry's HTTP options in force; an edit of the catalog files rebuilds
the routes and the site's ``CatalogView.mesh_http``, over the real admin endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from gwcore.policy.http_facts import DEFAULT_MESH_HTTP
from tests.harness import gateway_entry, in_thread, registration, sleep, write_json
from tests.net.test_admin import get

PROXY = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
MESH = {
    "Kind": "mesh",
    "HTTP": {
        "SanitizeXForwardedClientCert": True,
        "Incoming": {"RequestNormalization": {"PathWithEscapedSlashesAction": "REJECT_REQUEST"}},
    },
}


async def _routes(port: int) -> dict[str, Any]:
    status, _, body = await in_thread(get, port, "/routes")
    assert status == 200
    (site,) = json.loads(body)
    return site


async def _until_routes(port: int, predicate: Any) -> dict[str, Any]:
    for _ in range(100):  # 0.05 s apart: the catalog polls every 0.1 s
        site = await _routes(port)
        if predicate(site):
            return site
        await sleep(0.05)
    raise AssertionError(f"/routes never matched: {site}")


@pytest_twisted.ensureDeferred
async def test_routes_show_protocol_l7_and_the_mesh_options_and_follow_edits(gateway, upstreams):
    """proxy-defaults http: billing is http and L7, ldap's service-defaults keeps it tcp
    and L4; /routes shows the mesh entry's options with their origin. Changing
    proxy-defaults to tcp and deleting the mesh entry rebuild the routes and the view:
    billing turns L4 and the defaults come back."""
    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing", "ldap"))
    write_json(
        gateway.catalog / "regs.json",
        [registration("billing", up.port), registration("ldap", up.port)],
    )
    write_json(gateway.catalog / "ldap.json", {"Kind": "service-defaults", "Name": "ldap"})
    write_json(gateway.catalog / "proxy.json", PROXY)
    write_json(gateway.catalog / "mesh.json", MESH)
    await gateway.start()
    port = gateway.admin_port

    site = await _routes(port)
    by_name = {r["service"]: r for r in site["routes"]}
    assert (by_name["billing"]["protocol"], by_name["billing"]["l7"]) == ("http", True)
    assert (by_name["ldap"]["protocol"], by_name["ldap"]["l7"]) == ("tcp", False)
    mesh = site["mesh_http"]
    assert mesh["origin"] == "catalog/mesh.json" and mesh["SanitizeXForwardedClientCert"]
    assert mesh["RequestNormalization"]["PathWithEscapedSlashesAction"] == "REJECT_REQUEST"
    assert gateway.site.router.view.mesh_http.sanitize_x_forwarded_client_cert

    write_json(gateway.catalog / "proxy.json", {**PROXY, "Config": {"protocol": "tcp"}})
    (gateway.catalog / "mesh.json").unlink()
    site = await _until_routes(
        port,
        lambda s: (
            {r["service"]: r["l7"] for r in s["routes"]} == {"billing": False, "ldap": False}
            and s["mesh_http"]["origin"].startswith("(default")
        ),
    )
    assert {r["protocol"] for r in site["routes"]} == {"tcp"}
    assert gateway.site.router.view.mesh_http == DEFAULT_MESH_HTTP
