"""Header fields known valid are not checked again per request, through a real gateway
(in-process: file catalog, builtin CA, intentions; a real mTLS HTTP/1.1 client and a
real h11 service on 127.0.0.1 port 0) — and whatever is not known valid still is.

h11 checks a field with ``h11._headers.validate`` against its field-name and
field-value expressions; the tests count those calls made on the reactor's thread (the
client and the service, h11 users too, run in other threads).
"""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path
from typing import Any

import h11._headers as h11_headers
import pytest_twisted

import gwcore.net.h11_trusted as h11_trusted
from tests.harness import in_thread
from tests.runtime.l7_support import HttpService, get, link, mesh_http


class FieldChecks:
    """Counts h11's field-name and field-value checks made on the reactor's thread."""

    def __init__(self) -> None:
        self.inner = h11_headers.validate
        self.thread = threading.get_ident()
        self.calls = 0
        self.watched = {h11_headers._field_name_re, h11_headers._field_value_re}

    def __call__(self, regex: Any, *args: Any, **kwargs: Any) -> Any:
        if regex in self.watched and threading.get_ident() == self.thread:
            self.calls += 1
        return self.inner(regex, *args, **kwargs)


def _responder(request):
    body = b"ok"
    # A field with obs-text and inner white space, as a service may send it.
    headers = [("content-length", "2"), ("x-service", b"caf\xe9  au lait\tnoir")]
    return 200, headers, body


def _requests(gateway, paths, headers=None) -> Any:
    def run() -> list[tuple[int, bytes, Any]]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            out = []
            for path in paths:
                status, body, response = get(conn, path, headers=headers or {})
                out.append((status, body, response.getheader("x-service")))
            return out
        finally:
            conn.close()

    return in_thread(run)


@pytest_twisted.ensureDeferred
async def test_a_proxied_request_checks_no_field_again(gateway, upstreams, monkeypatch):
    """Three requests with no addon listening: the request the service gets (the
    client's fields, ``x-forwarded-proto``, ``x-request-id``, the 3.6 KB XFCC element)
    and the response the client gets (the service's fields, obs-text included,
    unchanged) are built without a field check of h11's; all arrive whole. What is
    checked is the XFCC element, once for the connection (h11's constructor with it and
    a ``host``: a name and a value each, four checks)."""
    checks = FieldChecks()
    monkeypatch.setattr(h11_headers, "validate", checks)
    service = HttpService(upstreams, _responder)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    checks.calls = 0  # the gateway's start-up is not a request
    answers = await _requests(gateway, ["/a", "/b", "/c"], {"X-Client": "v  1\t2"})
    assert [(s, b) for s, b, _ in answers] == [(200, b"ok")] * 3
    assert [x.encode("latin-1") for *_, x in answers] == [b"caf\xe9  au lait\tnoir"] * 3
    assert checks.calls == 4
    seen = service.requests[-1]
    assert seen.header("x-client") == "v  1\t2"
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-request-id") and seen.header("x-forwarded-client-cert")


@pytest_twisted.ensureDeferred
async def test_without_parsed_the_gateway_checks_every_field_as_before(
    gateway, upstreams, monkeypatch
):
    """An h11 without ``_parsed`` (detection said so): the same requests are answered
    the same, every field checked as h11's validating constructors do."""
    monkeypatch.setattr(h11_trusted, "TRUSTING", False)
    checks = FieldChecks()
    monkeypatch.setattr(h11_headers, "validate", checks)
    service = HttpService(upstreams, _responder)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    checks.calls = 0
    answers = await _requests(gateway, ["/a"])
    assert [(s, b) for s, b, _ in answers] == [(200, b"ok")]
    # Each field of both events, two checks per field (name and value).
    assert checks.calls >= 2 * (len(service.requests[0].headers) + 2)


@pytest_twisted.ensureDeferred
async def test_a_client_xfcc_value_is_checked_with_the_rest(gateway, upstreams, monkeypatch):
    """A client that sends its own XFCC value has it forwarded before the element: that
    value is not one the gateway checked, so the request's fields are checked as before
    (and the request still goes through)."""
    checks = FieldChecks()
    monkeypatch.setattr(h11_headers, "validate", checks)
    service = HttpService(upstreams, _responder)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    checks.calls = 0
    client_xfcc = "By=spiffe://other/ns/default/dc/dc1/svc/web;Hash=00"
    answers = await _requests(gateway, ["/a"], {"x-forwarded-client-cert": client_xfcc})
    assert [s for s, *_ in answers] == [200]
    assert service.requests[0].header("x-forwarded-client-cert").startswith(client_xfcc + ",")
    assert checks.calls >= 2 * len(service.requests[0].headers)


FORGER = """
def tgw_http_requestheaders(flow):
    if flow.request.path == "/req":
        flow.request.headers.set("x-forged", "a\\r\\nInjected: 1")
    if flow.request.path == "/nul":
        flow.request.headers.add("x-forged", "a\\x00b")


def tgw_http_responseheaders(flow):
    if flow.request.path == "/resp":
        flow.response.headers.set("x-forged", "a\\r\\nInjected: 1")
"""


@pytest_twisted.ensureDeferred
async def test_an_addon_value_with_a_line_break_never_reaches_anyone(
    gateway, upstreams, tmp_path: Path
):
    """With an addon listening the fields are checked as before: a request field an
    addon set with CR LF or NUL is refused (502) and not one byte of it reaches the
    service; a response field with CR LF ends the connection without a response. The
    fields the service and the client got are all valid."""
    addons = tmp_path / "forger-addons"
    addons.mkdir()
    (addons / "forger.py").write_text(textwrap.dedent(FORGER))
    gateway.plugin_paths = [str(addons)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "forger"]
    service = HttpService(upstreams, _responder)
    # The refused response's connection is cut while the service may still be writing.
    service.cut_ok = True
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()

    def run() -> list[Any]:
        out: list[Any] = []
        for path in ("/req", "/nul", "/resp"):
            conn = mesh_http(gateway, "billing", "web")
            try:
                out.append(get(conn, path)[0])
            except OSError as e:  # http.client: the connection closed with no response
                out.append(type(e).__name__)
            except Exception as e:  # http.client.RemoteDisconnected is an OSError too
                out.append(type(e).__name__)
            finally:
                conn.close()
        return out

    req, nul, resp = await in_thread(run)
    assert (req, nul) == (502, 502)
    assert resp == "RemoteDisconnected"
    assert [r.target for r in service.requests] == ["/resp"]
    assert b"Injected" not in bytes(service.raw) and b"x-forged" not in bytes(service.raw)
