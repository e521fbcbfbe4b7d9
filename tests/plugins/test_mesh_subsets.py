"""service-resolver subsets at a mesh site: a subset SNI goes to the subset's endpoints
(``Filter``, ``OnlyPassing``), the plain SNI to ``DefaultSubset``'s, as Consul's mesh
gateway builds them (agent/xds/endpoints.go endpointsFromServicesAndResolvers); and the
``service-resolver`` shape read as Consul validates it."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from gwcore.policy.consul_shapes import build_mesh_destinations
from gwcore.policy.mesh import NoRoute, route_by_sni
from gwcore.policy.resolver_entry import decode_with_resolvers, merge_resolvers, parse_resolver
from gwcore.policy.routes import RouteTable
from gwcore.policy.subsets import apply_subsets
from gwcore.testing import TRUST_DOMAIN
from tests.harness import hello, in_thread, sleep, write_json
from tests.multidc import Federation, federation, settle
from tests.net.test_passthrough import raw_exchange
from tests.policy.test_clienthello import openssl_hello

__all__ = ["federation"]


def sidecar(port: int, version: str, status: str = "passing", node: str = "") -> dict:
    """A sidecar proxy of ``billing`` (Consul copies the parent's Meta onto it)."""
    node = node or f"node-{version}-{port}"
    sid = f"billing-sidecar-{port}"
    return {
        "Node": node,
        "Address": "127.0.0.1",
        "Service": {
            "ID": sid,
            "Service": "billing-sidecar-proxy",
            "Kind": "connect-proxy",
            "Port": port,
            "Meta": {"version": version},
            "Tags": [version],
            "Proxy": {"DestinationServiceName": "billing"},
        },
        "Checks": [{"CheckID": f"{sid}-tcp", "Status": status, "ServiceID": sid}],
    }


RESOLVER = {
    "Kind": "service-resolver",
    "Name": "billing",
    "DefaultSubset": "v1",
    "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": '"v2" in Service.Tags', "OnlyPassing": True},
        "v2-any": {"Filter": "Service.Meta.version == v2"},
    },
}


def sni(subset: str | None = None) -> str:
    base = f"billing.default.dc1.internal.{TRUST_DOMAIN}"
    return f"{subset}.{base}" if subset else base


async def ask(mesh, name: str) -> bytes:
    return await in_thread(raw_exchange, mesh.port, openssl_hello(name), True)


@pytest_twisted.ensureDeferred
async def test_subset_snis_reach_the_subsets_endpoints(federation: Federation, upstreams):
    """v1 and the plain name (DefaultSubset v1) reach only the v1 instance; v2 with
    OnlyPassing has no endpoint while the v2 instance is warning; v2-any (no OnlyPassing)
    reaches it; an undefined subset has no route. Deleting the resolver live gives the
    plain name every instance again and removes the subset names."""
    one, two = upstreams(hello(b"v1 here")), upstreams(hello(b"v2 here"))
    catalog = [sidecar(one.port, "v1"), sidecar(two.port, "v2", status="warning")]
    mesh = await federation.start("mesh-dc1", "dc1", [*catalog, RESOLVER], role="mesh")

    assert await ask(mesh, sni("v1")) == b"v1 here"
    for _ in range(4):
        assert await ask(mesh, sni()) == b"v1 here"
    assert await ask(mesh, sni("v2-any")) == b"v2 here"
    assert await ask(mesh, sni("v2")) == b""
    assert await ask(mesh, sni("v9")) == b""
    await settle(mesh)
    assert mesh.metric("tgw_mesh_no_route_total", reason="unknown_subset") == 1
    assert (one.accepted, two.accepted) == (5, 1)
    described = mesh.site.describe_routes()["subsets"][sni()]
    assert described == {
        "v1": [f"127.0.0.1:{one.port}"],
        "v2": [],
        "v2-any": [f"127.0.0.1:{two.port}"],
    }

    write_json(mesh.root / "catalog" / "catalog.json", catalog)
    for _ in range(250):
        if not mesh.site.catalog_view().destinations[0].subsets:
            break
        await sleep(0.02)
    (billing,) = mesh.site.catalog_view().destinations
    assert sorted(e.port for e in billing.endpoints) == sorted([one.port, two.port])
    assert await ask(mesh, sni("v1")) == b""


@pytest_twisted.ensureDeferred
async def test_a_bad_filter_is_a_catalog_error_naming_the_entry(federation: Federation, upstreams):
    """A Filter that does not parse rejects its file (last good content stays) and the
    error names the file, the entry and the key."""
    one = upstreams(hello(b"v1 here"))
    mesh = await federation.start(
        "mesh-dc1", "dc1", [sidecar(one.port, "v1"), RESOLVER], role="mesh"
    )
    bad = json.loads(json.dumps(RESOLVER))
    bad["Subsets"]["v1"]["Filter"] = "Service.Meta.version = v1"
    write_json(mesh.root / "catalog" / "catalog.json", [sidecar(one.port, "v1"), bad])
    (source,) = [s for s in mesh.site.sources if s.name == "file_catalog"]
    for _ in range(250):
        if source.health().last_error:
            break
        await sleep(0.02)
    error = source.health().last_error or ""
    assert "catalog.json: [1].Subsets.v1.Filter: Bad Filter for subset 'v1'" in error
    assert await ask(mesh, sni("v1")) == b"v1 here"  # the last good state stays


def test_resolver_shape_and_problems():
    """Consul's Validate rules, each problem naming its key; weakly typed OnlyPassing."""
    entry, problems = parse_resolver(
        {"kind": "service-resolver", "name": "db", "default_subset": "a",
         "subsets": {"a": {"filter": "", "only_passing": "true"}},
         "ConnectTimeout": "5s", "Failover": {"*": {"Datacenters": ["dc2"]}}},
        "f.json",
    )  # fmt: skip
    assert problems == [] and entry is not None
    assert entry.subsets["a"].only_passing is True and entry.default_subset == "a"
    _, problems = parse_resolver(
        {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "zz",
         "Subsets": {"Bad_Name": {}, "ok": {"Filter": "x =="}, "b": {"Filtr": "x == 1"}}},
        "f.json",
        "[2]",
    )  # fmt: skip
    found = {(p.where, p.message.split(" ")[0]) for p in problems}
    assert ("[2].Subsets.Bad_Name", "Subset") in found
    assert ("[2].Subsets.ok.Filter", "Bad") in found
    assert ("[2].Subsets.b.Filtr", "unknown") in found
    _, problems = parse_resolver({"Kind": "service-resolver", "DefaultSubset": "x"}, "f")
    assert {p.where for p in problems} == {"Name", "DefaultSubset"}


def test_decode_keeps_other_documents_and_their_positions():
    """A file mixing resolvers with other documents: resolvers read here, the rest by
    consul_shapes with problems still naming their own index; duplicates reported."""
    data = json.dumps(
        [RESOLVER, sidecar(1, "v1"), {"Kind": "nope"}, dict(RESOLVER, Subsets={}, DefaultSubset="")]
    ).encode()
    docs, resolvers, problems = decode_with_resolvers("c.json", data)
    assert len(docs.registrations) == 1 and len(resolvers) == 2
    assert [p.where for p in problems] == ["[2].Kind"]
    merged, dup = merge_resolvers([resolvers])
    assert list(merged) == [resolvers[0].service] and dup[0].where == "[3]"


def test_route_by_sni_subsets():
    """Sans-IO: subset names resolve to the subset's endpoints; another datacenter's
    subset names are forwarded untouched."""
    docs, resolvers, _ = decode_with_resolvers(
        "c.json", json.dumps([RESOLVER, sidecar(1, "v1"), sidecar(2, "v2")]).encode()
    )
    merged, _ = merge_resolvers([resolvers])
    destinations, problems = apply_subsets(
        build_mesh_destinations(docs, "dc1"), docs, merged, "dc1"
    )
    assert problems == []
    routes = RouteTable.build(destinations, "dc1", TRUST_DOMAIN)
    gateways = {"dc2": destinations[0].endpoints}
    v2 = route_by_sni(sni("v2"), "dc1", TRUST_DOMAIN, routes, gateways)
    assert [e.port for e in v2.target.endpoints] == [2]
    base = route_by_sni(sni(), "dc1", TRUST_DOMAIN, routes, gateways)
    assert [e.port for e in base.target.endpoints] == [1]  # DefaultSubset
    missing = route_by_sni(sni("v7"), "dc1", TRUST_DOMAIN, routes, gateways)
    assert isinstance(missing, NoRoute) and missing.reason == "unknown_subset"
    far = route_by_sni(
        f"v7.billing.default.dc2.internal.{TRUST_DOMAIN}", "dc1", TRUST_DOMAIN, routes, gateways
    )
    assert far.remote and far.datacenter == "dc2"


@pytest.mark.parametrize(
    ("expression", "problem"),
    [("Service.Meta.version == v1", None), ("Service.Nope == 1", "cannot be evaluated")],
)
def test_a_filter_that_cannot_be_evaluated_empties_its_subset(expression, problem):
    """go-bexpr errors on a missing struct field: the subset gets no endpoints, reported."""
    resolver = {
        "Kind": "service-resolver",
        "Name": "billing",
        "Subsets": {"s": {"Filter": expression}},
    }
    docs, resolvers, _ = decode_with_resolvers(
        "c.json", json.dumps([resolver, sidecar(1, "v1")]).encode()
    )
    merged, _ = merge_resolvers([resolvers])
    (dest,), problems = apply_subsets(build_mesh_destinations(docs, "dc1"), docs, merged, "dc1")
    ((_, endpoints),) = dest.subsets
    if problem is None:
        assert problems == [] and len(endpoints) == 1
    else:
        assert endpoints == () and problem in problems[0].message
        assert problems[0].where == "[0].Subsets.s.Filter"


def test_check_config_reports_a_bad_resolver_by_file_and_key(tmp_path):
    """``tgw check-config`` (the file catalog's validation hook) names the file, the
    entry's position and the key of a resolver problem; a good resolver passes."""
    from tests.plugins.test_file_catalog import problems_for, site_config, write

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    bad = dict(RESOLVER, DefaultSubset="v7")
    write(catalog / "resolvers.json", [sidecar(1, "v1"), bad])
    found = problems_for(site_config(tmp_path, {"paths": ["catalog"]}, role="mesh"))
    assert found == [
        f"{tmp_path}/tgw.toml: sites.main.file_catalog.paths: {catalog}/resolvers.json: "
        "[1].DefaultSubset: DefaultSubset 'v7' is not a valid subset"
    ]
    write(catalog / "resolvers.json", [sidecar(1, "v1"), RESOLVER])
    assert problems_for(site_config(tmp_path, {"paths": ["catalog"]}, role="mesh")) == []
