"""Every kind of traffic an on-call engineer asks about, through the real ``twistd -n tgw``
(subprocesses on 127.0.0.1), with ``workers = 1`` and ``workers = 2``: allowed, denied,
unknown SNI, a bad client certificate, plain HTTP on the TLS port, a bare TCP connect
and a refused upstream. Each must produce its metric series (read from ``/metrics``,
which with workers adds up every worker's values) and its access-log fields
(docs/metrics.md)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwcore.plugins.builtin_ca import load_or_create_ca
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import (
    HandshakeRefusedError,
    free_port,
    gateway_entry,
    intentions,
    read_all,
    registration,
    sni_for,
    tls_connect,
    write_json,
)
from tests.integration.test_twistd import (
    SAMPLE_BODY,
    Ports,
    Program,
    access_records,
    http_get,
    spawn,  # noqa: F401  (fixture)
    start_gateway,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

# close_cause -> the destination its record names (None: never routed)
KINDS = {
    "completed": "billing",  # allowed
    "denied": "billing",
    "handshake:unknown_sni": None,
    "handshake:untrusted_ca": "billing",  # routed by its SNI; its certificate from another CA
    "handshake:not_tls": None,  # plain HTTP on the TLS port
    "no_data": None,  # a bare TCP connect (a load balancer's health check)
    "upstream_unavailable": "refused",
}


def totals(admin: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by name and label set."""
    answer = http_get(admin, "/metrics")
    assert answer is not None and answer[0] == 200, answer
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer[1])
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """PromQL's ``sum(name{labels})`` over ``samples``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def tls_client(port: int, sni: str, files: tuple[Path, Path, Path]) -> bytes:
    """Handshake, send a GET, read to the end; ``b""`` when the gateway refused."""
    try:
        sock = tls_connect(port, sni, *files)
    except HandshakeRefusedError:
        return b""
    with sock:
        try:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: billing\r\n\r\n")
            return read_all(sock)
        except (ssl.SSLError, OSError):  # TLS 1.3: a refused client cert shows here
            return b""


def plain(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if data:
            sock.sendall(data)
            with contextlib.suppress(OSError):
                return read_all(sock)
    return b""


@pytest.mark.parametrize("workers", [1, 2])
def test_each_kind_of_traffic_produces_its_series_and_access_log_fields(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the fixture imported above)
    workers: int,
) -> None:
    """Seven connections, one of each kind, through ``twistd -n tgw`` with the file
    catalog, the built-in CA and intentions: each is counted in
    ``tgw_connections_closed_total`` under its destination's four service labels and
    its close cause, the kind's own series move (decisions, rejections, handshake and
    no-route reasons, no-data, connect failures, bytes), and each has one access-log
    record with the fields that kind must fill; with two workers, /metrics adds up both
    workers and the records carry distinct connection ids and their worker index."""
    ports = Ports.pick()
    refused_port = free_port()  # nothing listens there
    catalog = tmp_path / "catalog"
    write_json(catalog / "gateway.json", gateway_entry("billing", "refused"))
    write_json(
        catalog / "registrations.json",
        [registration("billing", ports.sample), registration("refused", refused_port)],
    )
    write_json(
        catalog / "intentions.json",
        [intentions(s, ("web", "allow"), ("*", "deny")) for s in ("billing", "refused")],
    )
    ca_cert, ca_key = load_or_create_ca(tmp_path / "ca", TRUST_DOMAIN)
    ca, stranger = MeshCA(TRUST_DOMAIN, ca_cert, ca_key), MeshCA(TRUST_DOMAIN)
    root = ca.write_root(tmp_path / "clients" / "root.pem")

    def files(issuer: MeshCA, service: str) -> tuple[Path, Path, Path]:
        cert, key = issuer.write(
            tmp_path / "clients", f"{service}-{id(issuer)}", issuer.leaf(service)
        )
        return cert, key, root

    config = write_config(tmp_path, ports, more_sites='[sites.main.builtin_ca]\nca_dir = "ca"\n')
    text = config.read_text().replace("[gateway]\n", f"[gateway]\nworkers = {workers}\n", 1)
    config.write_text(text)
    twistd = start_gateway(spawn, config, ports)
    if workers > 1:
        wait_for(lambda: f"{workers} workers serving" in twistd.output(), "workers", twistd)

    web, api = files(ca, "web"), files(ca, "api")
    site = ports.site
    assert tls_client(site, sni_for("billing"), web).endswith(SAMPLE_BODY.encode())
    assert tls_client(site, sni_for("billing"), api) == b""
    assert tls_client(site, sni_for("nosuch"), web) == b""
    assert tls_client(site, sni_for("billing"), files(stranger, "web")) == b""
    assert plain(site, b"GET / HTTP/1.1\r\nHost: billing\r\n\r\n") == b""
    assert plain(site, b"") == b""
    assert tls_client(site, sni_for("refused"), web) == b""

    def all_closed() -> dict | None:
        samples = totals(ports.admin)
        closed = total(samples, "tgw_connections_closed_total", site="main")
        return samples if closed >= len(KINDS) and len(access_records(tmp_path)) >= 7 else None

    samples = wait_for(all_closed, "seven closed connections counted and logged", twistd)
    twistd.popen.terminate()  # the records are all written; the test needs nothing more

    m = lambda name, **labels: total(samples, name, site="main", **labels)  # noqa: E731
    svc = {"namespace": "default", "partition": "default", "datacenter": "dc1"}
    nobody = {"service": "", "namespace": "", "partition": "", "datacenter": ""}
    for cause, destination in KINDS.items():
        labels = {**svc, "service": destination} if destination else nobody
        assert m("tgw_connections_closed_total", cause=cause, **labels) == 1, cause
    assert m("tgw_connections_closed_total") == len(KINDS)
    assert m("tgw_downstream_accepted_total") == len(KINDS)
    assert m("tgw_downstream_connections_active") == 0
    # allowed
    assert m("tgw_authz_decisions_total", service="billing", decision="allow", **svc) == 1
    assert m("tgw_bytes_total", service="billing", direction="downstream", **svc) > len(SAMPLE_BODY)
    assert m("tgw_upstream_connect_seconds_count", service="billing", **svc) == 1
    assert m("tgw_tls_handshakes_total") == 3  # completed: allowed, denied, refused upstream
    # denied
    assert m("tgw_authz_decisions_total", service="billing", decision="deny", **svc) == 1
    assert m("tgw_downstream_rejected_total", reason="denied") == 1
    # unknown SNI, bad certificate, plain HTTP: handshake reasons, and nothing else
    assert m("tgw_no_route_total", reason="unknown_sni") == 1
    assert m("tgw_tls_handshake_errors_total", reason="unknown_sni") == 1
    assert m("tgw_tls_handshake_errors_total", reason="untrusted_ca") == 1
    assert m("tgw_tls_handshake_errors_total", reason="not_tls") == 1
    assert m("tgw_tls_handshake_errors_total") == 3
    # bare TCP: its own counter, not a TLS error
    assert m("tgw_downstream_no_data_total") == 1
    # refused upstream
    refused = {**svc, "service": "refused"}
    assert m("tgw_upstream_connect_failures_total", reason="refused", **refused) == 1
    assert m("tgw_upstream_unavailable_total", **refused) == 1
    assert m("tgw_downstream_rejected_total", reason="upstream_unavailable") == 1
    assert m("tgw_authz_decisions_total", decision="allow", **refused) == 1

    records = {r["close_cause"]: r for r in access_records(tmp_path)}
    assert sorted(records) == sorted(KINDS), records
    for cause, destination in KINDS.items():
        r = records[cause]
        assert r["record_type"] == "closed" and r["destination"] == destination, r
        assert r["site"] == "main" and r["client"].startswith("127.0.0.1:"), r
        assert r["downstream_local_address"] == f"127.0.0.1:{site}", r
        assert r["worker"] in ({None} if workers == 1 else {0, 1}), r
    ids = [r["connection_id"] for r in records.values()]
    assert len(set(ids)) == len(ids)
    ok = records["completed"]
    assert (ok["decision"], ok["engine"]) == ("allow", "intentions")
    assert ok["source"].endswith("/svc/web") and ok["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert ok["endpoint"] == ok["upstream_host"] == f"127.0.0.1:{ports.sample}"
    assert ok["bytes_downstream"] > len(SAMPLE_BODY) and ok["connect_attempts"] == 1
    no = records["denied"]
    assert no["decision"] == "deny" and no["source"].endswith("/svc/api")
    assert "from catalog/intentions.json" in no["reason"] and str(tmp_path) not in no["reason"]
    assert no["endpoint"] is None and no["bytes_downstream"] == 0
    assert records["handshake:unknown_sni"]["sni"] in (None, sni_for("nosuch"))
    bad = records["handshake:untrusted_ca"]
    assert bad["peer_certificate_uri"].endswith("/svc/web") and bad["source"] is None
    assert bad["peer_certificate_serial"] and bad["peer_certificate_expiry"].endswith("+00:00")
    for cause in ("handshake:not_tls", "no_data"):
        assert records[cause]["tls_version"] is None and records[cause]["sni"] is None
    gone = records["upstream_unavailable"]
    assert gone["upstream_host"] == f"127.0.0.1:{refused_port}" and gone["endpoint"] is None
    assert gone["connect_attempts"] == 0 and "refused" in (gone["close_detail"] or "")
    assert json.dumps(records)  # every record is plain JSON
