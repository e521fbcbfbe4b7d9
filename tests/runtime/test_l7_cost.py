"""What an L7 request costs the gateway beyond the HTTP codecs, counted through a real
gateway (in-process: file catalog, builtin CA, intentions; a real mTLS HTTP/1.1 client
and a real h11 service on 127.0.0.1 port 0).

Per connection, not per request: the local address (a ``getsockname``), the labelled
metric children. Per request, nothing that a request with no addon does not need: no
addon flow, no Deferred around a decision the engines gave at once, no system call
for the ``x-request-id``. And the request the service receives is the same whether
an addon listens (the flow path) or none does (the light path).
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

import gwcore.runtime.authorize as authorize
import gwcore.runtime.l7_exchange as l7_exchange
from gwcore.contract.metrics import GatewayMetrics, SiteChildren, service_key
from gwcore.policy.model import Destination, ServiceName
from tests.harness import in_thread
from tests.runtime.l7_support import HttpService, get, link, mesh_http


class Counting:
    """Wraps a callable and counts its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner(*args, **kwargs)


def _three_requests(gateway, paths=("/a", "/b", "/c")) -> list[tuple[int, bytes]]:
    def run() -> list[tuple[int, bytes]]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return [get(conn, path)[:2] for path in paths]
        finally:
            conn.close()

    return in_thread(run)


@pytest_twisted.ensureDeferred
async def test_the_local_address_is_read_once_per_connection(gateway, upstreams, monkeypatch):
    """Three requests on one connection are each decided on an ``AuthzRequest`` with
    the connection's local address, read once (one ``getsockname``), not per request."""
    reads = Counting(authorize.local_address)
    monkeypatch.setattr(authorize, "local_address", reads)
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    assert await _three_requests(gateway) == [
        (200, b"GET /a 0"),
        (200, b"GET /b 0"),
        (200, b"GET /c 0"),
    ]
    assert reads.calls == 1


@pytest_twisted.ensureDeferred
async def test_a_decision_given_at_once_takes_no_deferred(gateway, upstreams, monkeypatch):
    """The intentions engine answers at once: the requests are decided (and allowed)
    without the authorizer wrapping each decision in a Deferred."""
    wrapped = Counting(authorize.succeed)
    monkeypatch.setattr(authorize, "succeed", wrapped)
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    assert [s for s, _ in await _three_requests(gateway)] == [200, 200, 200]
    assert wrapped.calls == 0
    assert (
        gateway.metric(
            "tgw_authz_decisions_total", service="billing", engine="intentions", decision="allow"
        )
        == 3
    )


@pytest_twisted.ensureDeferred
async def test_no_addon_flow_is_built_when_no_addon_listens(gateway, upstreams, monkeypatch):
    """With no HTTP addon in the stack, requests go upstream without an ``HttpFlow``;
    the access-log records are complete all the same."""
    flows = Counting(l7_exchange.HttpFlow)
    monkeypatch.setattr(l7_exchange, "HttpFlow", flows)
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    assert [s for s, _ in await _three_requests(gateway)] == [200, 200, 200]
    assert flows.calls == 0
    await gateway.wait_for(
        lambda: len([r for r in gateway.access_records() if r.get("record_type") == "request"]) == 3
    )
    records = [r for r in gateway.access_records() if r.get("record_type") == "request"]
    assert [(r["path"], r["status"], r["answered_by"]) for r in records] == [
        ("/a", 200, None),
        ("/b", 200, None),
        ("/c", 200, None),
    ]


@pytest_twisted.ensureDeferred
async def test_request_ids_are_uuid4s_made_without_a_system_call(gateway, upstreams, monkeypatch):
    """Each request without an ``x-request-id`` gets a distinct UUID4 (RFC 9562: version
    4, variant 10), drawn without ``os.urandom`` (a ``getrandom`` system call each)."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    urandom = Counting(os.urandom)

    def run() -> list[int]:
        conn = mesh_http(gateway, "billing", "web")  # the test's client leaf: os.urandom
        monkeypatch.setattr(os, "urandom", urandom)
        try:
            return [get(conn, path)[0] for path in ("/a", "/b", "/c")]
        finally:
            conn.close()

    assert await in_thread(run) == [200, 200, 200]
    ids = [r.header("x-request-id") for r in service.requests]
    assert len(set(ids)) == 3
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert urandom.calls == 0


@pytest_twisted.ensureDeferred
async def test_request_metric_children_are_resolved_once(gateway, upstreams, monkeypatch):
    """Three answered requests of one method and code class count on one labelled child
    of ``tgw_http_requests_total`` and one of the duration histogram, each resolved once."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    await gateway.start()
    metrics = gateway.service.metrics
    requests = Counting(metrics.http_requests.labels)
    seconds = Counting(metrics.http_request_seconds.labels)
    monkeypatch.setattr(metrics.http_requests, "labels", requests)
    monkeypatch.setattr(metrics.http_request_seconds, "labels", seconds)
    assert [s for s, _ in await _three_requests(gateway)] == [200, 200, 200]
    await gateway.wait_for(
        lambda: (
            gateway.metric(
                "tgw_http_requests_total", service="billing", method_class="GET", code_class="2xx"
            )
            == 3
        )
    )
    assert gateway.metric("tgw_http_request_duration_seconds_count", service="billing") == 3
    assert (requests.calls, seconds.calls) == (1, 1)


def test_cached_request_children_follow_a_forgotten_service() -> None:
    """After ``forget`` (the service left the catalog) the cached L7 children are
    dropped with the series: a later request counts on a new, exported series."""
    metrics = GatewayMetrics()
    children = SiteChildren(metrics, "main")
    billing = Destination(ServiceName("billing"), "dc1")
    first = children.http_requests(billing, "GET", "2xx")
    assert children.http_requests(billing, "GET", "2xx") is first
    first.inc()
    children.http_seconds(billing).observe(0.01)
    children.forget(service_key(billing))
    labels = {"site": "main", "service": "billing", "namespace": "default"}
    labels |= {"partition": "default", "datacenter": "dc1"}
    get_value = metrics.registry.get_sample_value
    assert (
        get_value("tgw_http_requests_total", {**labels, "method_class": "GET", "code_class": "2xx"})
        is None
    )
    again = children.http_requests(billing, "GET", "2xx")
    assert again is not first
    again.inc()
    children.http_seconds(billing).observe(0.01)
    assert (
        get_value("tgw_http_requests_total", {**labels, "method_class": "GET", "code_class": "2xx"})
        == 1
    )
    assert get_value("tgw_http_request_duration_seconds_count", labels) == 1


NOOP_ADDON = """
def tgw_http_error(flow):
    pass
"""


@pytest.mark.parametrize("addon", [False, True], ids=["no-addon", "addon-listening"])
@pytest_twisted.ensureDeferred
async def test_the_service_gets_the_same_request_with_or_without_an_addon(
    gateway, upstreams, tmp_path: Path, addon: bool
):
    """A request with a hop-by-hop field named by ``Connection``, a client XFCC value,
    a chunked body and no ``x-request-id`` reaches the service with the same fields in
    the same order whether an addon listens (the flow is built) or none does."""
    service = HttpService(upstreams)
    link(gateway, service.port, ("web", "allow"))
    if addon:
        addons = tmp_path / "noop-addons"
        addons.mkdir()
        (addons / "noop.py").write_text(textwrap.dedent(NOOP_ADDON))
        gateway.plugin_paths = [str(addons)]
        gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "noop"]
    await gateway.start()
    client_xfcc = "By=spiffe://other/ns/default/dc/dc1/svc/web;Hash=00"

    def run() -> tuple[int, bytes]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            conn.request(
                "POST",
                "/pay/./x",
                body=iter([b"ab", b"cd"]),
                headers={
                    "Connection": "x-drop",
                    "x-drop": "1",
                    "X-Keep": "2",
                    "x-forwarded-client-cert": client_xfcc,
                },
                encode_chunked=True,
            )
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    assert await in_thread(run) == (200, b"POST /pay/x 4")
    [seen] = service.requests
    names = [name for name, _ in seen.headers]
    assert names == [
        "host",
        "accept-encoding",
        "x-keep",
        "x-forwarded-proto",
        "x-request-id",
        "x-forwarded-client-cert",
        "transfer-encoding",
    ]
    xfcc = seen.header("x-forwarded-client-cert")
    assert xfcc.startswith(client_xfcc + ",By=spiffe://")
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("transfer-encoding") == "chunked" and seen.body == b"abcd"
