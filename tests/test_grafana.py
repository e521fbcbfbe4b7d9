"""contrib/grafana: the dashboard and the alert rules query only metrics tgw exports.

An in-process gateway with every plugin whose metrics they use (file and DNS
catalogs, built-in CA, intentions, embedded OPA) serves allowed, denied, unknown-SNI,
refused-upstream and DNS-routed traffic and one reload; then every ``tgw_*`` series
named in any panel or rule must be in ``/metrics`` as read over HTTP, with samples,
except the few error counters that this traffic cannot produce (:data:`NOT_DRIVEN`),
which must at least be declared there.
"""

from __future__ import annotations

import http.client
import json
import re
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    HandshakeRefusedError,
    free_port,
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

GRAFANA = Path(__file__).parents[1] / "contrib" / "grafana"
METRIC = re.compile(r"\btgw_[a-z0-9_]+\b")
NOT_DRIVEN = {
    # Errors this traffic cannot cause without breaking a plugin on purpose.
    "tgw_authz_errors_total": "an engine raising",
    "tgw_downstream_rejected_total": "max_connections overflow or an addon veto",
    "tgw_upstream_tls_errors_total": "a TLS upstream with a bad certificate",
    "tgw_catalog_errors_total": "a broken catalog file",
    "tgw_certificate_errors_total": "a certificate provider failing",
    "tgw_opa_errors_total": "a policy without a decision",
    "tgw_opa_fail_open_total": "fail_open with OPA failing",
}
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_info")


def queried() -> dict[str, set[str]]:
    """Metric name -> where it is queried (dashboard panel titles, alert names)."""
    found: dict[str, set[str]] = {}
    dashboard = json.loads((GRAFANA / "tgw-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                found.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for variable in dashboard["templating"]["list"]:
        for name in METRIC.findall(json.dumps(variable.get("query", ""))):
            found.setdefault(name, set()).add(f"variable {variable['name']}")
    rules = yaml.safe_load((GRAFANA / "tgw-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name in METRIC.findall(rule["expr"]):
                found.setdefault(name, set()).add(f"alert {rule['alert']}")
    return found


def test_dashboard_and_rules_are_well_formed():
    """Every panel has a unique id, a grid position and targets with a refId; every rule
    has an alert name, an expression, a severity and a summary."""
    dashboard = json.loads((GRAFANA / "tgw-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
    rules = yaml.safe_load((GRAFANA / "tgw-alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Connections by destination", "Handshake failures by reason",
                   "Upstream endpoints by state", "Catalog age", "Certificate expiry",
                   "Config reloads", "Authorization decisions"):  # fmt: skip
        assert wanted in titles


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        assert answer.status == 200
        return answer.read().decode()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_every_queried_metric_is_exported_after_traffic(gateway, upstreams):
    """Drive each kind of traffic, then check every name the dashboard and the rules
    query against the real /metrics exposition."""
    billing, ledger = upstreams(hello(b"billing")), upstreams(hello(b"ledger"))
    # Nothing listens on these: connections are refused, and one of the two endpoints is
    # ejected (the last one stays in rotation).
    closed = [free_port(), free_port()]
    write_json(gateway.catalog / "gw.json", gateway_entry("billing", "broken"))
    write_json(
        gateway.catalog / "regs.json",
        [registration("billing", billing.port)] + [registration("broken", p) for p in closed],
    )
    write_json(
        gateway.catalog / "ixn.json",
        [
            intentions("billing", ("web", "allow"), ("*", "deny")),
            intentions("broken", ("web", "allow")),
            intentions("ledger", ("web", "allow")),
        ],
    )
    policy = gateway.root / "policy"
    policy.mkdir()
    (policy / "allow.rego").write_text("package tgw\n\nallow := true\n")
    gateway.plugins = ["file_catalog", "dns_catalog", "builtin_ca", "intentions", "opa"]
    gateway.site_options["outlier_consecutive_failures"] = 1
    gateway.extra_site = textwrap.dedent(f"""
        [sites.main.opa]
        policies = ["policy"]
        path = "tgw/allow"

        [sites.main.dns_catalog.services.ledger]
        hostname = "localhost"
        port = {ledger.port}
        family = "ipv4"
        """)
    await gateway.start()
    await gateway.wait_for(lambda: len(gateway.site.current()[0]) == 3)
    web = gateway.client_files("web")
    intruder = gateway.client_files("intruder")
    assert await in_thread(request, gateway.port, sni_for("billing"), web) == b"billing"
    assert await in_thread(request, gateway.port, sni_for("ledger"), web) == b"ledger"
    assert await in_thread(request, gateway.port, sni_for("billing"), intruder) == b""
    assert await in_thread(request, gateway.port, sni_for("broken"), web) == b""
    with pytest.raises(HandshakeRefusedError):
        await in_thread(tls_connect, gateway.port, sni_for("nowhere"), *web)
    assert gateway.service is not None
    await gateway.service.reload()
    await gateway.wait_for(lambda: len(gateway.access_records()) == 5)  # all closed

    text = await in_thread(scrape, gateway.admin_port)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name for f in families.values() for s in f.samples}
    missing, undeclared = [], []
    for name, where in sorted(queried().items()):
        family = next(
            (name.removesuffix(x) for x in ("", *SUFFIXES) if name.removesuffix(x) in families),
            None,
        )
        if family is None:
            undeclared.append(f"{name} ({', '.join(sorted(where))})")
        elif name not in samples and name not in NOT_DRIVEN:
            missing.append(f"{name} ({', '.join(sorted(where))})")
    assert undeclared == [], "queried but not exported at all: " + "; ".join(undeclared)
    assert missing == [], "queried but without samples after traffic: " + "; ".join(missing)
    assert set(NOT_DRIVEN) <= set(queried()), "NOT_DRIVEN lists a name nothing queries"
