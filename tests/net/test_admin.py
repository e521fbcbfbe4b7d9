"""The admin endpoint over real HTTP on 127.0.0.1: index, metrics, readiness, routes,
certificates and config of a running gateway."""

from __future__ import annotations

import json
import urllib.request

import pytest_twisted

from tests.harness import gateway_entry, in_thread, intentions, registration, sni_for, write_json


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


@pytest_twisted.ensureDeferred
async def test_admin_endpoints_describe_the_running_gateway(gateway, upstreams):
    """/ lists the endpoints; /metrics is Prometheus text; /ready, /routes, /certs and
    /config are JSON describing the live site."""
    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    await gateway.start()
    port = gateway.admin_port

    status, _, body = await in_thread(get, port, "/")
    assert status == 200 and "/metrics" in json.loads(body)["endpoints"]

    status, ctype, body = await in_thread(get, port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert b'tgw_routes{site="main"} 1.0' in body

    status, _, body = await in_thread(get, port, "/ready")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True
    assert ready["sites"]["main"]["catalog_sources"]["file_catalog"]["ok"] is True

    status, _, body = await in_thread(get, port, "/routes")
    (site,) = json.loads(body)
    assert [r["sni"] for r in site["routes"]] == [sni_for("billing")]
    assert site["routes"][0]["endpoints"][0]["port"] == up.port

    status, _, body = await in_thread(get, port, "/certs")
    (certs,) = json.loads(body)
    assert certs["leaves"][sni_for("billing")]["uris"] == [
        f"spiffe://{gateway.ca.trust_domain}/ns/default/dc/dc1/svc/billing"
    ]
    assert len(certs["roots"]) == 1
    assert certs["roots"][0]["trust_domain"] == gateway.ca.trust_domain

    status, _, body = await in_thread(get, port, "/config")
    assert status == 200 and json.loads(body)["sites"]["main"]["name"] == "legacy-gw"

    status, _, _ = await in_thread(get, port, "/nope")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_explain_names_the_deciding_engine_without_counting_a_decision(
    gateway, upstreams, capsys
):
    """/explain (and `tgw explain`) answer from the live site which engine decides and why;
    asking does not move tgw_authz_decisions_total."""
    from gwcore.cli import main

    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "deny"), ("*", "allow")))
    await gateway.start()
    admin = f"http://127.0.0.1:{gateway.admin_port}"

    status, _, body = await in_thread(
        get, gateway.admin_port, "/explain?source=web&destination=billing"
    )
    answer = json.loads(body)
    assert status == 200 and answer["decision"]["verdict"] == "deny"
    assert answer["decision"]["engine"] == "intentions" and "web" in answer["decision"]["reason"]
    assert answer["engines"] == [
        {"engine": "intentions", "verdict": "deny", "reason": answer["decision"]["reason"]}
    ]

    args = ["explain", "--admin", admin, "--source", "api", "--destination", "billing"]
    assert await in_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "/svc/api -> billing (site main): allow" in out and "decided by intentions" in out

    missing = ["explain", "--admin", admin, "--source", "web", "--destination", "nowhere"]
    assert await in_thread(main, missing) == 1
    assert "not routed" in capsys.readouterr().err
    assert (
        gateway.metric(
            "tgw_authz_decisions_total", service="billing", engine="intentions", decision="deny"
        )
        == 0
    )


@pytest_twisted.ensureDeferred
async def test_explain_answers_bad_input_with_400_and_one_log_line(gateway, upstreams):
    """/explain?source=%ff (not UTF-8) or a source with a '/' in it is the client's
    mistake: 400 with a JSON error, one log line, no traceback; the endpoint still works."""
    from twisted.logger import globalLogPublisher

    up = upstreams()
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    await gateway.start()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for query in ("source=%ff&destination=billing", "source=web/x&destination=billing"):
            status, ctype, body = await in_thread(get, gateway.admin_port, f"/explain?{query}")
            assert status == 400 and ctype == "application/json"
            assert "source=" in json.loads(body)["error"]
    finally:
        globalLogPublisher.removeObserver(events.append)
    admin_lines = [e for e in events if e.get("log_namespace") == "tgw.admin"]
    assert len(admin_lines) == 2
    assert not [e for e in events if e.get("log_failure") is not None]
    status, _, _ = await in_thread(
        get, gateway.admin_port, "/explain?source=web&destination=billing"
    )
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_explain_an_http_request_names_the_deciding_permission(gateway, upstreams, capsys):
    """With method/path/header at an L7 destination (service-defaults Protocol http),
    /explain and `tgw explain` decide that request: the path is normalised first
    (``/public/%2e%2E/admin`` is ``/admin``) and the answer names the intention and the
    permission; bad method/path/header values are a 400 naming the parameter."""
    from gwcore.cli import main

    up = upstreams()
    l7 = {
        "Kind": "service-intentions",
        "Name": "billing",
        "Sources": [{"Name": "web", "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"],
                                         "Header": [{"Name": "x-team", "Exact": "a"}]}},
        ]}],
    }  # fmt: skip
    defaults = {"Kind": "service-defaults", "Name": "billing", "Protocol": "http"}
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", [l7, defaults])
    await gateway.start()
    port, admin = gateway.admin_port, f"http://127.0.0.1:{gateway.admin_port}"
    base = "/explain?source=web&destination=billing"

    status, _, body = await in_thread(get, port, f"{base}&path=/public/%252e%252E/admin")
    answer = json.loads(body)
    assert status == 200 and answer["decision"]["verdict"] == "deny", answer
    assert answer["request"]["path"] == "/admin"
    assert answer["request"]["original_path"] == "/public/%2e%2E/admin"
    assert 'permission 0 (PathPrefix "/admin") denies' in answer["decision"]["reason"]

    query = f"{base}&method=GET&path=/invoices&header=X-Team:%20a"
    status, _, body = await in_thread(get, port, query)
    answer = json.loads(body)
    assert answer["decision"]["verdict"] == "allow"
    assert "permission 1 (" in answer["decision"]["reason"]

    # No permission matches (no x-team): the default policy decides, not another source.
    args = ["explain", "--admin", admin, "--source", "web", "--destination", "billing",
            "--method", "POST", "--path", "/invoices", "--header", "X-Team: a"]  # fmt: skip
    assert await in_thread(main, args) == 2
    out = capsys.readouterr().out
    assert "request: POST /invoices" in out and "no permission matches POST /invoices" in out

    # Without a request the L7 intention denies (the L4 rule).
    status, _, body = await in_thread(get, port, base)
    assert "L7 intentions deny on L4 connections" in json.loads(body)["decision"]["reason"]

    for bad, param in (
        ("method=G%20T", "method="),
        ("path=/a%2500", "path="),
        ("path=nope", "path="),
        ("header=no-colon", "header="),
    ):
        status, _, body = await in_thread(get, port, f"{base}&{bad}")
        assert status == 400 and param in json.loads(body)["error"], (bad, body)
