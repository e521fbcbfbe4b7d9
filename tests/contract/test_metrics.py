"""gwcore.contract.metrics: the labelled children a site resolves once and reuses."""

from __future__ import annotations

from gwcore.contract.metrics import GatewayMetrics, SiteChildren


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_site_children_are_the_families_own_children_resolved_once() -> None:
    """What a connection increments through the cache lands in the exported series,
    and asking again returns the same child objects (no second ``labels()``)."""
    metrics = GatewayMetrics()
    children = SiteChildren(metrics, "main")
    billing = children.service("billing")
    assert children.service("billing") is billing
    assert billing.connections is metrics.connections.labels(site="main", service="billing")
    children.accepted.inc()
    children.active.inc()
    billing.connections.inc()
    billing.bytes_upstream.inc(10)
    billing.bytes_downstream.inc(20)
    billing.upstream_connect_seconds.observe(0.002)
    billing.connection_seconds.observe(1.5)
    allow = children.decision("billing", "intentions", "allow")
    assert children.decision("billing", "intentions", "allow") is allow
    allow.inc()
    site = {"site": "main"}
    svc = {"site": "main", "service": "billing"}
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
    SiteChildren(metrics, "main").service("db").connections.inc()
    SiteChildren(metrics, "main").service("db").connections.inc()
    labels = {"site": "main", "service": "db"}
    assert sample(metrics, "tgw_downstream_connections_total", **labels) == 2
