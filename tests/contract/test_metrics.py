"""gwcore.contract.metrics: the labelled children a site resolves once and reuses."""

from __future__ import annotations

import os
import subprocess
import sys

from gwcore.contract.metrics import GatewayMetrics, SiteChildren, service_key, service_labels
from gwcore.policy.model import Destination, ServiceName

BILLING = Destination(ServiceName("billing"), "dc1")
SERVICE = {
    "service": "billing",
    "namespace": "default",
    "partition": "default",
    "datacenter": "dc1",
}


def _python(env: dict[str, str], *args: str) -> str:
    """What ``python *args`` prints, run with ``env`` (it must succeed)."""
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_site_children_are_the_families_own_children_resolved_once() -> None:
    """What a connection increments through the cache lands in the exported series,
    and asking again returns the same child objects (no second ``labels()``)."""
    metrics = GatewayMetrics()
    children = SiteChildren(metrics, "main")
    billing = children.service(BILLING)
    assert children.service(BILLING) is billing
    assert billing.connections is metrics.connections.labels(site="main", **SERVICE)
    children.accepted.inc()
    children.active.inc()
    billing.connections.inc()
    billing.bytes_upstream.inc(10)
    billing.bytes_downstream.inc(20)
    billing.upstream_connect_seconds.observe(0.002)
    billing.connection_seconds.observe(1.5)
    allow = children.decision(BILLING, "intentions", "allow")
    assert children.decision(BILLING, "intentions", "allow") is allow
    allow.inc()
    site = {"site": "main"}
    svc = {"site": "main", **SERVICE}
    assert sample(metrics, "tgw_downstream_accepted_total", **site) == 1
    assert sample(metrics, "tgw_downstream_connections_active", **site) == 1
    assert sample(metrics, "tgw_downstream_connections_total", **svc) == 1
    assert sample(metrics, "tgw_bytes_total", direction="upstream", **svc) == 10
    assert sample(metrics, "tgw_bytes_total", direction="downstream", **svc) == 20
    assert sample(metrics, "tgw_upstream_connect_seconds_count", **svc) == 1
    assert sample(metrics, "tgw_connection_duration_seconds_sum", **svc) == 1.5
    assert (
        sample(metrics, "tgw_authz_decisions_total", engine="intentions", decision="allow", **svc)
        == 1
    )


def test_a_reloaded_site_with_the_same_name_counts_on_the_same_series() -> None:
    """A reload builds a new Site (and a new cache) on the same process metrics: the
    counts continue rather than restart."""
    metrics = GatewayMetrics()
    SiteChildren(metrics, "main").service(BILLING).connections.inc()
    SiteChildren(metrics, "main").service(BILLING).connections.inc()
    labels = {"site": "main", **SERVICE}
    assert sample(metrics, "tgw_downstream_connections_total", **labels) == 2


def test_one_name_in_two_namespaces_partitions_or_datacenters_keeps_apart_series() -> None:
    """Two ``billing`` services (namespaces ``default`` and ``team``, partition ``ap2``,
    datacenter ``dc2``) each count on their own series of every per-service family, with
    ``service`` still the bare name; forgetting one leaves the others' series in place."""
    metrics = GatewayMetrics()
    children = SiteChildren(metrics, "main")
    others = [
        Destination(ServiceName("billing", "team"), "dc1"),
        Destination(ServiceName("billing", "default", "ap2"), "dc1"),
        Destination(ServiceName("billing"), "dc2"),
    ]
    for n, destination in enumerate([BILLING, *others], start=1):
        children.service(destination).connections.inc(n)
        children.closed(destination, "completed").inc(n)
        children.decision(destination, "intentions", "deny").inc(n)
        children.of(metrics.upstream_unavailable, destination).inc(n)
        children.of(metrics.upstream_endpoints, destination, state="total").set(n)
    names = (
        "tgw_downstream_connections_total",
        "tgw_connections_closed_total",
        "tgw_authz_decisions_total",
        "tgw_upstream_unavailable_total",
        "tgw_upstream_endpoints",
    )
    for name in names:
        series = {
            (s.labels["namespace"], s.labels["partition"], s.labels["datacenter"]): s.value
            for f in metrics.registry.collect()
            for s in f.samples
            if s.name == name
        }
        assert series == {
            ("default", "default", "dc1"): 1,
            ("team", "default", "dc1"): 2,
            ("default", "ap2", "dc1"): 3,
            ("default", "default", "dc2"): 4,
        }, name
    children.forget(("billing", "team", "default", "dc1"))
    left = metrics.registry.get_sample_value(
        "tgw_downstream_connections_total", {"site": "main", **SERVICE, "namespace": "team"}
    )
    assert left is None
    assert sample(metrics, "tgw_downstream_connections_total", site="main", **SERVICE) == 1


def test_the_l7_request_series_of_a_service_leave_with_it() -> None:
    """L7 request counters, durations and denials carry the four service labels, and
    ``forget`` deletes every one of a service's series (whatever its method class, code
    class or denial reason) while another namespace's ``billing`` keeps its own."""
    metrics = GatewayMetrics()
    children = SiteChildren(metrics, "main")
    team = Destination(ServiceName("billing", "team"), "dc1")
    for destination in (BILLING, team):
        labels = service_labels(destination)
        for code_class in ("2xx", "4xx"):
            metrics.http_requests.labels("main", *labels.values(), "GET", code_class).inc()
        metrics.http_denied.labels(site="main", **labels, reason="intentions").inc()
        metrics.http_request_seconds.labels(site="main", **labels).observe(0.01)
    children.forget(service_key(BILLING))
    left = {
        (s.name, s.labels.get("namespace"))
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name.startswith("tgw_http_") and s.labels.get("service") == "billing"
    }
    assert {ns for _, ns in left} == {"team"}
    assert ("tgw_http_requests_total", "team") in left
    assert ("tgw_http_denied_total", "team") in left
    assert ("tgw_http_request_duration_seconds_count", "team") in left


def test_before_routing_a_close_cause_has_empty_service_labels() -> None:
    """A connection that ends before it was routed counts under empty service,
    namespace, partition and datacenter, not under some destination."""
    metrics = GatewayMetrics()
    SiteChildren(metrics, "main").closed(None, "handshake:unknown_sni").inc()
    empty = dict.fromkeys(SERVICE, "")
    labels = {"site": "main", **empty, "cause": "handshake:unknown_sni"}
    assert sample(metrics, "tgw_connections_closed_total", **labels) == 1


_MULTIPROCESS_SCRIPT = """
from types import SimpleNamespace
from prometheus_client import Gauge, generate_latest
from twisted.internet.task import Clock
from gwcore.contract.metrics import GatewayMetrics
from gwcore.net.consul import ConsulFreshness

metrics = GatewayMetrics()
metrics.family(Gauge, "tgw_plugin_gauge", "A plugin's gauge.", ["site"]).labels(site="main").set(7)
clock = Clock()
clock.advance(100)
freshness = ConsulFreshness(SimpleNamespace(metrics=metrics, reactor=clock, name="main"), "p")
freshness.ok("catalog")
print(generate_latest(metrics.exposition).decode())
"""


def test_with_workers_plugin_gauges_and_consul_freshness_are_exported_right(tmp_path) -> None:
    """In multiprocess mode (a worker, ``PROMETHEUS_MULTIPROC_DIR`` set): a plugin gauge
    made by ``family()`` has a live mode (no ``pid`` label), and Consul freshness is a
    last-success timestamp; the callback staleness gauge, which workers would export as
    a constant 0 (a stale catalog looking fresh), is not exported."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = _python(env, "-c", _MULTIPROCESS_SCRIPT)
    assert 'tgw_plugin_gauge{site="main"} 7.0' in out, out
    assert 'tgw_consul_last_success_timestamp_seconds{plugin="p",site="main"} 100.0' in out, out
    assert "tgw_consul_staleness_seconds{" not in out, out


_REMOVE_SCRIPT = """
from prometheus_client import generate_latest
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.metrics_series import remove_series

metrics = GatewayMetrics()
gauge = metrics.certificate_expiry
gauge.labels(site="main", kind="upstream_ca", name="billing").set(1.0)
gauge.labels(site="main", kind="upstream_ca", name="payments").set(2.0)
remove_series(gauge, "main", "upstream_ca", "billing")
print(generate_latest(metrics.exposition).decode())
"""


def test_with_workers_a_removed_series_leaves_the_exposition(tmp_path) -> None:
    """In multiprocess mode ``Gauge.remove()`` leaves the value in the worker's file
    (and warns); ``remove_series`` makes the series leave ``/metrics`` without a
    warning (warnings are errors here), and the other series stay."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = _python(env, "-W", "error", "-c", _REMOVE_SCRIPT)
    assert 'name="payments"' in out, out
    assert 'name="billing"' not in out, out


def test_in_one_process_remove_series_deletes_the_child() -> None:
    """Without workers ``remove_series`` is ``Gauge.remove()`` (a missing child is no error)."""
    from gwcore.contract.metrics_series import remove_series

    metrics = GatewayMetrics()
    metrics.routes.labels(site="a").set(3)
    remove_series(metrics.routes, "a")
    remove_series(metrics.routes, "a")
    assert metrics.registry.get_sample_value("tgw_routes", {"site": "a"}) is None


_PID_SCRIPT = """
import os

asked = []
real_getpid = os.getpid
os.getpid = lambda: asked.append(1) or real_getpid()  # before prometheus_client binds it

from prometheus_client import generate_latest
from gwcore.contract.metrics import GatewayMetrics
from gwcore.runtime.workers import use_worker_values

use_worker_values()  # what worker_main does first
metrics = GatewayMetrics()
before = len(asked)
child = metrics.handshakes.labels(site="main", version="TLSv1.3")
for _ in range(1000):
    child.inc()
print(len(asked) - before)
print(generate_latest(metrics.exposition).decode())
"""


def test_a_worker_updates_its_metric_files_without_asking_for_its_pid(tmp_path) -> None:
    """In a worker (multiprocess mode), 1,000 increments make no ``os.getpid()`` call
    (prometheus-client's default asks on every update, a system call each), and the
    worker's file still carries the value the exposition adds up."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = _python(env, "-W", "error", "-c", _PID_SCRIPT)
    calls, exposition = out.split("\n", 1)
    assert int(calls) == 0, out
    assert 'tgw_tls_handshakes_total{site="main",version="TLSv1.3"} 1000.0' in exposition, out


_SAME_FILES_SCRIPT = """
import os, sys

from prometheus_client import generate_latest, values
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.metrics_series import remove_series, use_worker_values

if sys.argv[1] == "worker":
    use_worker_values()
else:  # prometheus-client's own value (what workers used before), pid read once too
    pid = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)
metrics = GatewayMetrics()
first = metrics.handshakes.labels(site="main", version="TLSv1.3")
first.inc()
metrics.active.labels(site="main").inc(3)
metrics.active.labels(site="main").dec()
metrics.max_connections.labels(site="main").set(500)
metrics.certificate_expiry.labels(site="main", kind="leaf", name="web").set(1.5e9)
metrics.routes.labels(site="main").set(7)
metrics.routes.labels(site="gone").set(2)
remove_series(metrics.routes, "gone")
for seconds in (0.0004, 0.003, 0.2, 7.0):
    metrics.handshake_seconds.labels(site="main").observe(seconds)
# Enough series for the counter file to outgrow its first 64 KiB mapping twice,
# then the first series again: its entry is written through the new mapping.
for n in range(3000):
    metrics.handshakes.labels(site=f"site-{n:04d}", version="TLSv1.2").inc(n)
first.inc(41)
metrics.handshake_seconds.labels(site="main").observe(0.05)
print(generate_latest(metrics.exposition).decode())
values.close_all_multiprocess_files()  # -W error: no unclosed-file warning at exit
"""


def test_a_workers_values_are_exposed_exactly_as_the_librarys(tmp_path) -> None:
    """A worker's metric values (``use_worker_values``) write files that the exposition
    adds up to exactly what prometheus-client's own multiprocess values give for the
    same updates, line for line: counters, histograms, gauges of every mode, a removed
    gauge series, and a file that outgrew its first mapping (3,000 series) before an
    old series moved again."""
    out = {}
    kind = "worker"
    for mode in ("library", kind):
        d = tmp_path / mode
        d.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(d)}
        out[mode] = _python(env, "-W", "error", "-c", _SAME_FILES_SCRIPT, mode)
    assert 'tgw_tls_handshakes_total{site="main",version="TLSv1.3"} 42.0' in out[kind]
    assert 'tgw_tls_handshakes_total{site="site-2999",version="TLSv1.2"} 2999.0' in out[kind]
    assert 'tgw_routes{site="gone"}' not in out[kind]
    # The same lines (the order of families follows the order the files are listed in).
    assert sorted(out[kind].splitlines()) == sorted(out["library"].splitlines())


_CALLS_SCRIPT = """
import sys

from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.metrics_series import use_worker_values

use_worker_values()  # a no-op without PROMETHEUS_MULTIPROC_DIR (one process)
metrics = GatewayMetrics()
counter = metrics.handshakes.labels(site="main", version="TLSv1.3")
gauge = metrics.active.labels(site="main")
histogram = metrics.handshake_seconds.labels(site="main")
counter.inc(); gauge.inc(); histogram.observe(0.01)  # children made, first writes done
calls = []
def count(frame, event, arg):
    if event == "call":
        calls.append(frame.f_code.co_qualname)
sys.setprofile(count)
counter.inc()
gauge.inc()
gauge.dec()
gauge.set(4)
histogram.observe(0.01)
sys.setprofile(None)
print(len(calls), " ".join(calls))
"""


def test_a_workers_metric_updates_cost_no_more_python_calls_than_one_process(
    tmp_path,
) -> None:
    """An update in a worker (multiprocess mode) makes no more Python calls than the
    same update in one process: a counter's, a gauge's and a histogram's. Before, each
    value write in a worker also called the fork check, the pid function,
    ``write_value`` and a packing helper (about fifteen writes per handshake)."""
    counts = {}
    for mode in ("one process", "worker"):
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if mode == "worker":
            env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
        out = _python(env, "-W", "error", "-c", _CALLS_SCRIPT)
        counts[mode] = out
    one, worker = (int(counts[m].split()[0]) for m in ("one process", "worker"))
    assert worker <= one, counts
