"""The five HTTP addon hooks through a real gateway (gwcore/runtime/l7_exchange.py with
gwcore/contract/http_addons.py): mesh mTLS client in, a real h11 service out, a
drop-in addon that records each call. Order of calls, mutations seen upstream and by
the client, respond() never reaching the upstream (and named in the access log),
fail-closed on an addon that raises, tgw_http_error on an upstream failure, and no
hook for a denied request."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import h11
import pytest_twisted

from tests.harness import gateway_entry, in_thread, intentions, registration, write_json
from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults

RECORDER = """
calls = []


def tgw_http_requestheaders(flow):
    calls.append(("requestheaders", flow.request.path, flow.source.name))
    flow.request.headers.set("x-addon", "1")
    if flow.request.path.startswith("/rewrite/"):
        flow.request.path = flow.request.path[len("/rewrite"):]
    if flow.request.path == "/answer":
        flow.respond(418, b"short and stout", [("x-answer", "yes")], addon="teapot")
    if flow.request.path == "/boom":
        raise RuntimeError("requestheaders failed")


def tgw_http_request(flow):
    calls.append(("request", flow.request.path))
    if flow.request.path == "/boom-request":
        raise RuntimeError("request failed")


def tgw_http_responseheaders(flow):
    calls.append(("responseheaders", flow.response.status))
    flow.response.headers.set("x-addon-response", "1")
    flow.response.headers.remove("x-upstream-secret")
    if flow.request.path == "/boom-response":
        raise RuntimeError("responseheaders failed")


def tgw_http_response(flow):
    calls.append(("response", flow.response.status, flow.answered_by))
    flow.conn.annotate("recorder.last_status", flow.response.status)


def tgw_http_error(flow):
    calls.append(("error", flow.error))
"""


class Service(HttpService):
    """The l7 test service, noting requests that ended before their end (a cancelled
    upstream stream) and answers the gateway no longer took (it cancelled the stream
    first), instead of failing the test's teardown."""

    def __init__(self, upstreams, responder) -> None:
        self.incomplete: list[str] = []
        self.unsent: list[str] = []
        super().__init__(upstreams, responder)

    def _serve(self, sock, upstream) -> None:
        try:
            super()._serve(sock, upstream)
        except h11.RemoteProtocolError as e:
            self.incomplete.append(str(e))
        except OSError as e:
            self.unsent.append(repr(e))


def _responder(request):
    body = f"{request.method} {request.target} addon={request.header('x-addon')}".encode()
    headers = [("content-length", str(len(body))), ("x-upstream-secret", "internal")]
    return 200, headers, body


def _link(gateway, port: int) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(
        gateway.catalog / "ixn.json", intentions("billing", ("web", "allow"), ("batch", "deny"))
    )


async def _start(gateway, upstreams, tmp_path: Path, port: int | None = None):
    addons = tmp_path / "l7-addons"
    addons.mkdir()
    (addons / "recorder.py").write_text(textwrap.dedent(RECORDER))
    service = Service(upstreams, _responder)
    _link(gateway, service.port if port is None else port)
    gateway.plugin_paths = [str(addons)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "recorder"]
    await gateway.start()
    module = gateway.site.stack.pm.get_plugin("recorder")
    return service, module.calls


def _requests(gateway) -> list[dict]:
    return [r for r in gateway.access_records() if r.get("record_type") == "request"]


def _exchange(gateway, *paths: str, source: str = "web", method: str = "GET"):
    def run():
        conn = mesh_http(gateway, "billing", source)
        try:
            out = []
            for path in paths:
                body = b"0123456789" if method == "POST" else None
                status, data, response = get(conn, path, method=method, body=body)
                out.append((status, data, dict(response.getheaders())))
            return out
        finally:
            conn.close()

    return in_thread(run)


@pytest_twisted.ensureDeferred
async def test_hooks_run_in_order_and_their_changes_reach_both_sides(gateway, upstreams, tmp_path):
    """requestheaders, request, responseheaders, response, once per request; a header
    and a path the addon rewrote are what the service receives; a response header it
    set (and one it removed) is what the client sees; the record has the new path."""
    service, calls = await _start(gateway, upstreams, tmp_path)
    [(status, body, headers)] = await _exchange(gateway, "/rewrite/charges?x=1")
    assert (status, body) == (200, b"GET /charges?x=1 addon=1")
    assert headers.get("x-addon-response") == "1" and "x-upstream-secret" not in headers
    assert [r.target for r in service.requests] == ["/charges?x=1"]
    assert calls == [
        ("requestheaders", "/rewrite/charges?x=1", "web"),
        ("request", "/charges?x=1"),
        ("responseheaders", 200),
        ("response", 200, None),
    ]
    await gateway.wait_for(lambda: len(_requests(gateway)) == 1)
    record = _requests(gateway)[0]
    assert record["path"] == "/charges?x=1" and record["answered_by"] is None
    # an annotation written from an HTTP hook lands in the connection's own record
    await gateway.wait_for(
        lambda: any(r.get("record_type") == "closed" for r in gateway.access_records())
    )
    [closed] = [r for r in gateway.access_records() if r.get("record_type") == "closed"]
    assert closed["annotations"] == {"recorder.last_status": 200}


@pytest_twisted.ensureDeferred
async def test_respond_short_circuits_and_never_reaches_the_upstream(gateway, upstreams, tmp_path):
    """The addon's answer goes to the client; the service receives not one byte; only
    tgw_http_response follows; the access log names the addon in answered_by; the
    connection goes on to serve the next request from the upstream."""
    service, calls = await _start(gateway, upstreams, tmp_path)
    answered, forwarded = await _exchange(gateway, "/answer", "/after")
    assert answered[:2] == (418, b"short and stout") and answered[2]["x-answer"] == "yes"
    assert forwarded[:2] == (200, b"GET /after addon=1")
    assert [r.target for r in service.requests] == ["/after"]
    assert b"/answer" not in bytes(service.raw)
    assert calls[:2] == [("requestheaders", "/answer", "web"), ("response", 418, "teapot")]
    await gateway.wait_for(lambda: len(_requests(gateway)) == 2)
    first = _requests(gateway)[0]
    assert (first["status"], first["answered_by"], first["upstream_host"]) == (418, "teapot", None)


@pytest_twisted.ensureDeferred
async def test_an_addon_raising_in_requestheaders_fails_closed(gateway, upstreams, tmp_path):
    """500 from the gateway, nothing reaches the service, the failure is counted and
    in the record; the connection stays usable."""
    service, _ = await _start(gateway, upstreams, tmp_path)
    failed, after = await _exchange(gateway, "/boom", "/fine")
    assert failed[:2] == (500, b"addon error\n")
    assert after[0] == 200
    assert [r.target for r in service.requests] == ["/fine"]
    assert b"/boom" not in bytes(service.raw)
    hook = "tgw_http_requestheaders"
    assert gateway.metric("tgw_addon_errors_total", hook=hook) == 1
    await gateway.wait_for(lambda: len(_requests(gateway)) == 2)
    record = _requests(gateway)[0]
    assert record["answered_by"] == "tgw"
    assert record["error"] == f"addon_error: recorder raised in {hook}"


@pytest_twisted.ensureDeferred
async def test_an_addon_raising_in_request_fails_closed(gateway, upstreams, tmp_path):
    """tgw_http_request runs when the whole request was read, before its end goes
    upstream: the client gets 500 instead of the service's answer, and a chunked
    request never completes at the service (its last chunk is never sent)."""
    service, _ = await _start(gateway, upstreams, tmp_path)
    [(status, body, _)] = await _exchange(gateway, "/boom-request", method="POST")
    assert (status, body) == (500, b"addon error\n")

    def chunked() -> int:
        conn = mesh_http(gateway, "billing", "web")
        try:
            conn.request("POST", "/boom-request", body=iter([b"abc", b"def"]), encode_chunked=True)
            return conn.getresponse().status
        finally:
            conn.close()

    assert await in_thread(chunked) == 500
    assert [r.body for r in service.requests if r.target == "/boom-request"] in (
        [],
        [b"0123456789"],
    )
    assert all(r.body != b"abcdef" for r in service.requests)
    await gateway.wait_for(lambda: bool(service.incomplete))
    assert any("incomplete chunked read" in error for error in service.incomplete)
    assert gateway.metric("tgw_addon_errors_total", hook="tgw_http_request") == 2


@pytest_twisted.ensureDeferred
async def test_an_addon_raising_in_responseheaders_sends_502_not_the_response(
    gateway, upstreams, tmp_path
):
    """The service answered, but the half-rewritten response is not sent: 502 with none
    of its headers; the next request on the connection is served normally."""
    service, _ = await _start(gateway, upstreams, tmp_path)
    failed, after = await _exchange(gateway, "/boom-response", "/fine")
    assert failed[:2] == (502, b"addon error\n")
    assert "x-addon-response" not in failed[2] and "x-upstream-secret" not in failed[2]
    assert after[:2] == (200, b"GET /fine addon=1")
    assert [r.target for r in service.requests] == ["/boom-response", "/fine"]
    assert gateway.metric("tgw_addon_errors_total", hook="tgw_http_responseheaders") == 1


@pytest_twisted.ensureDeferred
async def test_the_error_hook_runs_when_the_upstream_is_down(gateway, upstreams, tmp_path):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    _, calls = await _start(gateway, upstreams, tmp_path, port=dead)
    [(status, _, _)] = await _exchange(gateway, "/x")
    assert status == 502
    assert [c[0] for c in calls] == ["requestheaders", "error"]
    assert calls[-1][1].startswith("unavailable")


@pytest_twisted.ensureDeferred
async def test_a_denied_request_never_reaches_an_addon(gateway, upstreams, tmp_path):
    """Addons run after authorization, never instead of it."""
    service, calls = await _start(gateway, upstreams, tmp_path)
    [(status, body, _)] = await _exchange(gateway, "/answer", source="batch")
    assert (status, body) == (403, b"RBAC: access denied")
    assert calls == [] and service.requests == []
