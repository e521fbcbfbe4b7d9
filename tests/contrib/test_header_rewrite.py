"""contrib/addons/header_rewrite.py through the plugin author's harness (the stack loaded
as the gateway loads it, no sockets): request and response rules per destination in
the documented order, the path prefix rewrite, and config the addon refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from gwcore.contract.plugin_host import PluginLoadError
from gwcore.testing import LoadedStack, http_flow, http_response, load_stack

ADDON = str(Path(__file__).resolve().parents[2] / "contrib" / "addons" / "header_rewrite.py")

BILLING = {
    "request_remove": ["X-Debug"],
    "request_set": {"x-env": "prod"},
    "request_add": {"x-via": "tgw"},
    "response_remove": ["server"],
    "response_set": {"cache-control": "no-store"},
    "response_add": {"x-served-by": "billing"},
    "path_prefix": "/api/",
    "path_prefix_rewrite": "/v2/",
}


def _load(tmp_path: Path, **destinations: dict) -> LoadedStack:
    return load_stack(tmp_path, [ADDON], {"header_rewrite": destinations})


def _exchange(loaded: LoadedStack, path: str, service: str = "billing", headers=()):
    flow = http_flow("GET", path, service=service, headers=headers)
    loaded.http.request_headers(flow)
    loaded.http.request(flow)
    flow.response = http_response(
        200, [("Server", "upstream/1.0"), ("cache-control", "max-age=60"), ("x-served-by", "u")]
    )
    loaded.http.response_headers(flow)
    return flow


def test_request_and_response_rules_apply_in_order(tmp_path: Path) -> None:
    """remove (any case, every field), then set (replacing the client's), then add
    (keeping the client's); the path prefix is swapped and the query kept."""
    loaded = _load(tmp_path, billing=BILLING)
    flow = _exchange(
        loaded,
        "/api/charges?limit=5",
        headers=[("x-debug", "1"), ("X-DEBUG", "2"), ("X-Env", "dev"), ("x-via", "client")],
    )
    headers = flow.request.headers
    assert "x-debug" not in headers
    assert headers.get_all("x-env") == ["prod"]
    assert headers.get_all("x-via") == ["client", "tgw"]
    assert flow.request.path == "/v2/charges?limit=5"
    response = flow.response.headers
    assert "server" not in response
    assert response.get_all("cache-control") == ["no-store"]
    assert response.get_all("x-served-by") == ["u", "billing"]


def test_a_path_outside_the_prefix_and_other_destinations_are_untouched(tmp_path: Path) -> None:
    loaded = _load(tmp_path, billing=BILLING)
    assert _exchange(loaded, "/apiary").request.path == "/apiary"
    other = _exchange(loaded, "/api/x", service="ledger", headers=[("x-debug", "1")])
    assert other.request.path == "/api/x"
    assert other.request.headers.get("x-debug") == "1"
    assert other.response.headers.get("server") == "upstream/1.0"


def test_an_answer_from_another_addon_is_not_rewritten(tmp_path: Path) -> None:
    """Response rules are for the upstream's response (tgw_http_responseheaders is not
    called for an answer)."""
    (tmp_path / "answer.py").write_text(
        "def tgw_http_requestheaders(flow):\n"
        "    flow.respond(503, b'later', [('server', 'maintenance')])\n"
    )
    loaded = load_stack(tmp_path, ["answer.py", ADDON], {"header_rewrite": {"billing": BILLING}})
    flow = http_flow("GET", "/api/x")
    loaded.http.request_headers(flow)
    loaded.http.response_headers(flow)
    assert flow.response.headers.get("server") == "maintenance"
    assert flow.request.path == "/api/x"  # the addon after the answer never ran


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"request_set": {"Host": "evil"}}, "request_set.Host: 'Host' is managed by the gateway"),
        (
            {"request_set": {"x-a": "1\r\nx-b: 2"}},
            "request_set.x-a: contains a control or non-ASCII character",
        ),
        ({"response_remove": ["transfer-encoding"]}, "response_remove: 'transfer-encoding'"),
        ({"request_add": {"bad name": "1"}}, "'bad name' is not an HTTP field name"),
        ({"path_prefix": "/a/"}, "path_prefix and path_prefix_rewrite go together"),
        ({"path_prefix": "api/", "path_prefix_rewrite": "/v2/"}, "must be a path starting"),
        ({"path_prefix": "/a/", "path_prefix_rewrite": "/b?x=1"}, "must not hold a query"),
        ({"request_sett": {}}, "request_sett: unknown key; did you mean 'request_set'?"),
    ],
)
def test_bad_rules_are_refused_naming_file_and_key(
    tmp_path: Path, rules: dict, message: str
) -> None:
    with pytest.raises(PluginLoadError) as raised:
        _load(tmp_path, billing=rules)
    assert message in str(raised.value)
    assert "sites.main.header_rewrite.billing." in str(raised.value)
    assert str(tmp_path / "tgw.toml") in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_through_the_gateway_both_directions_are_rewritten(gateway, upstreams):
    """A real HTTP service records what it got: the client's x-debug gone, x-env set,
    x-via added, the path prefix swapped; the client sees the response rules applied
    to the service's headers."""
    from tests.harness import gateway_entry, in_thread, intentions, registration, write_json
    from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults

    def responder(request):
        body = request.target.encode()
        return 200, [("content-length", str(len(body))), ("server", "upstream/1.0")], body

    service = HttpService(upstreams, responder)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", service.port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugin_paths = [str(Path(ADDON).parent)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "header_rewrite"]
    gateway.extra_site = """
[sites.main.header_rewrite.billing]
request_remove = ["x-debug"]
request_set = { "x-env" = "prod" }
request_add = { "x-via" = "tgw" }
response_remove = ["server"]
response_set = { "cache-control" = "no-store" }
path_prefix = "/api/"
path_prefix_rewrite = "/v2/"
"""
    await gateway.start()

    def call():
        conn = mesh_http(gateway, "billing", "web")
        try:
            headers = {"x-debug": "1", "x-env": "dev", "x-via": "client"}
            status, body, response = get(conn, "/api/charges?limit=5", headers=headers)
            return status, body, response.getheaders()
        finally:
            conn.close()

    status, body, headers = await in_thread(call)
    assert (status, body) == (200, b"/v2/charges?limit=5")
    [seen] = service.requests
    assert seen.header("x-debug") is None
    assert [v for k, v in seen.headers if k == "x-env"] == ["prod"]
    assert [v for k, v in seen.headers if k == "x-via"] == ["client", "tgw"]
    names = [k.lower() for k, _ in headers]
    assert "server" not in names
    assert [v for k, v in headers if k.lower() == "cache-control"] == ["no-store"]


def test_tgw_plugins_lists_both_http_addons_with_their_hooks() -> None:
    """``tgw plugins`` (with contrib/addons in plugin_paths) shows the HTTP hooks each
    implements, so an operator sees where a request may be changed."""
    from gwcore.cli.plugin_listing import installed_plugins

    found = {p.name: p for p in installed_plugins([Path(ADDON).parent])}
    assert found["header_rewrite"].hooks == (
        "tgw_validate_site_config",
        "tgw_http_requestheaders",
        "tgw_http_responseheaders",
    )
    assert found["credential_injection"].hooks == (
        "tgw_validate_site_config",
        "tgw_http_requestheaders",
    )
    assert not found["header_rewrite"].error and not found["credential_injection"].error
