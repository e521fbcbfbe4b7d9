"""Contract tests of the Consul plugins: they parse exactly the example bodies of
``reference/consul-terminating-gateway.md`` §5, validate their sections, and report a 403
once with the permission it needs (counted)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.contract import pki
from gwcore.net.consul import ConsulError
from gwcore.plugins.consul_catalog import ConsulCatalogSource
from gwcore.plugins.consul_catalog import read_settings as catalog_settings
from gwcore.plugins.consul_certs import parse_leaf, parse_roots
from gwcore.plugins.consul_intentions import intentions_from_match
from gwcore.policy.intentions import IntentionSet
from gwcore.policy.model import Health, ServiceName, TLSMode, Verdict
from gwcore.testing import TRUST_DOMAIN, FakeSite, MeshCA, site_config
from gwcore.testing.consul import ConsulDouble

CATALOG = "gwcore.plugins.consul_catalog"

# Reference §5, verbatim.
GATEWAY_SERVICES = [
    {"Gateway": {"Name": "legacy-gw"}, "Service": {"Name": "billing"},
     "GatewayKind": "terminating-gateway", "CAFile": "/etc/tgw/billing-ca.pem",
     "CertFile": "/etc/tgw/gw.pem", "KeyFile": "/etc/tgw/gw.key",
     "SNI": "billing.corp.example", "ServiceKind": "service", "CreateIndex": 31,
     "ModifyIndex": 31},
    {"Gateway": {"Name": "legacy-gw"}, "Service": {"Name": "ldap"},
     "GatewayKind": "terminating-gateway", "FromWildcard": True, "CAFile": "/etc/tgw/ca.pem",
     "ServiceKind": "service", "CreateIndex": 33, "ModifyIndex": 33},
]  # fmt: skip
HEALTH_BILLING = [
    {"Node": {"ID": "", "Node": "legacy_node", "Address": "10.0.0.9", "Datacenter": "dc1",
              "TaggedAddresses": None,
              "Meta": {"external-node": "true", "external-probe": "true"},
              "CreateIndex": 20, "ModifyIndex": 20},
     "Service": {"ID": "billing-1", "Service": "billing", "Tags": [],
                 "Address": "billing.corp.example", "Port": 443, "Meta": {"version": "v1"},
                 "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
                 "Kind": "", "CreateIndex": 21, "ModifyIndex": 21},
     "Checks": [{"Node": "legacy_node", "CheckID": "billing-tcp", "Name": "billing tcp",
                 "Status": "passing", "ServiceID": "billing-1", "ServiceName": "billing",
                 "Output": "", "Type": "tcp"}]},
]  # fmt: skip
MATCH = {
    "billing": [
        {"SourceNS": "default", "SourceName": "web", "DestinationNS": "default",
         "DestinationName": "billing", "SourceType": "consul", "Action": "deny",
         "Precedence": 9, "CreateIndex": 40, "ModifyIndex": 40},
        {"SourceNS": "default", "SourceName": "*", "DestinationNS": "default",
         "DestinationName": "billing", "SourceType": "consul", "Action": "allow",
         "Precedence": 8, "CreateIndex": 41, "ModifyIndex": 41},
    ]
}  # fmt: skip


def _site(tmp_path: Path, **section: Any) -> FakeSite:
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    return FakeSite(config, tmp_path / "state")


def test_catalog_parses_the_reference_gateway_services_and_health_bodies(tmp_path):
    """The §5 bodies give billing (mTLS, SNI, hostname endpoint, passing) and a wildcard
    ldap with one-way TLS and no instances yet."""
    source = ConsulCatalogSource(_site(tmp_path))
    source._linked = {item["Service"]["Name"]: item for item in GATEWAY_SERVICES}
    source._health = {"billing": copy.deepcopy(HEALTH_BILLING), "ldap": []}
    billing, ldap = source.build()
    assert billing.service == ServiceName("billing") and not billing.from_wildcard
    assert billing.tls.mode is TLSMode.MTLS and billing.tls.sni == "billing.corp.example"
    (endpoint,) = billing.endpoints
    assert (endpoint.address, endpoint.port, endpoint.health) == (
        "billing.corp.example",
        443,
        Health.PASSING,
    )
    assert endpoint.node == "legacy_node" and endpoint.meta["version"] == "v1"
    assert ldap.from_wildcard and ldap.tls.mode is TLSMode.TLS and ldap.endpoints == ()


def test_catalog_leaves_out_only_the_bad_linked_service(tmp_path):
    """A CertFile without KeyFile is Consul's validation error: that service is left out
    and reported, the others stay."""
    source = ConsulCatalogSource(_site(tmp_path))
    bad = {**GATEWAY_SERVICES[0]}
    del bad["KeyFile"]
    source._linked = {"billing": bad, "ldap": GATEWAY_SERVICES[1]}
    source._health = {"billing": HEALTH_BILLING, "ldap": []}
    assert [d.name for d in source.build()] == ["ldap"]
    assert (
        source._site.metrics.registry.get_sample_value(
            "tgw_catalog_errors_total", {"site": "main", "source": "consul_catalog"}
        )
        == 1
    )


def test_intentions_parse_the_reference_match_body():
    """The §5 match body: web is denied by the exact intention, api allowed by the wildcard,
    each decision naming the Consul intention."""
    intentions, problems = intentions_from_match(copy.deepcopy(MATCH))
    assert problems == []
    engine = IntentionSet(intentions)
    web = engine.decide(ServiceName("web"), ServiceName("billing"))
    api = engine.decide(ServiceName("api"), ServiceName("billing"))
    assert web.verdict is Verdict.DENY and "default/web => default/billing (deny)" in web.reason
    assert api.verdict is Verdict.ALLOW and "precedence 8" in api.reason
    assert "consul intentions/match" in api.reason


def test_intentions_left_out_item_is_reported_not_fatal():
    """An item with an action Consul does not know is left out with a problem; the rest
    still applies (a peer source is kept, and never matches a local caller)."""
    body = copy.deepcopy(MATCH)
    first = MATCH["billing"][0]
    body["billing"].insert(0, {**first, "SourceName": "x", "Action": "maybe"})
    body["billing"].insert(0, {**first, "SourceName": "y", "SourcePeer": "p1"})
    intentions, problems = intentions_from_match(body)
    assert len(intentions) == 3 and len(problems) == 1 and "Action" in problems[0]


def test_certs_parse_roots_and_leaf_in_the_reference_shape():
    """ca/roots with two roots trusts both; ca/leaf checks the SPIFFE ID it names."""
    first, second = MeshCA(), MeshCA()
    roots = {
        "ActiveRootID": pki.fingerprint_hex(second.cert),
        "TrustDomain": TRUST_DOMAIN,
        "Roots": [
            {"ID": pki.fingerprint_hex(ca.cert), "Name": "Consul CA Primary Cert",
             "SerialNumber": 7, "Active": ca is second,
             "RootCert": pki.certificate_pem(ca.cert).decode(), "IntermediateCerts": None,
             "NotBefore": "2025-01-01T00:00:00Z", "NotAfter": "2035-01-01T00:00:00Z",
             "PrivateKeyType": "ec", "PrivateKeyBits": 256, "CreateIndex": 8, "ModifyIndex": 8}
            for ca in (first, second)
        ],
    }  # fmt: skip
    active, td, certs = parse_roots(roots)
    assert active == pki.fingerprint_hex(second.cert) and td == TRUST_DOMAIN
    assert certs == [first.cert, second.cert]
    leaf = second.leaf("billing")
    chain, key = pki.leaf_pem(leaf)
    uri = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/billing"
    body = {
        "SerialNumber": "0a:1b:2c", "CertPEM": chain.decode(), "PrivateKeyPEM": key.decode(),
        "Service": "billing", "ServiceURI": uri, "ValidAfter": "2025-06-01T10:00:00Z",
        "ValidBefore": "2025-06-04T10:00:00Z", "CreateIndex": 5, "ModifyIndex": 5,
    }  # fmt: skip
    parsed, serial = parse_leaf(body, uri)
    assert parsed.certificate == leaf.certificate and serial == "0a:1b:2c"
    with pytest.raises(ValueError, match="not spiffe"):
        parse_leaf(body, uri.replace("billing", "ldap"))


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"address": "ftp://x"}, "address"),
        ({"wait": "20m"}, "wait"),
        ({"max_connections": 2}, "max_connections"),
        ({"cert_file": "c.pem", "address": "https://x:8501"}, "cert_file"),
        ({"token": "a", "token_file": "t"}, "token_file"),
        ({"tokn": "a"}, "tokn"),
    ],
)
def test_catalog_section_problems_are_reported(tmp_path, section, problem):
    """Bad connection keys are config problems naming the key."""
    config = site_config(tmp_path, [CATALOG], {CATALOG: section})
    _, problems = catalog_settings(config, CATALOG)
    assert any(p.key.endswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "address",
    [
        "http://tgw:pw-s3cret-4242@127.0.0.1:8500",
        "https://pw-s3cret-4242@consul.internal:8501",
        "tgw:pw-s3cret-4242@127.0.0.1:8500",  # no scheme: would be echoed as a bad URL
        "ftp://tgw:pw-s3cret-4242@x",
    ],
)
def test_credentials_in_the_address_are_refused_without_echoing_them(tmp_path, address):
    """Issue 16 (low): ``address = "http://user:password@host"`` is a config problem
    naming the key and pointing at ``token``/``token_file``; the message never holds
    the password (check-config, a rejected reload and start-up errors print it), and
    the settings fall back to the default address rather than keep the credentials."""
    config = site_config(tmp_path, [CATALOG], {CATALOG: {"address": address}})
    settings, problems = catalog_settings(config, CATALOG)
    (problem,) = problems
    assert problem.key == f"sites.main.{CATALOG}.address"
    assert "credentials" in problem.message and "token_file" in problem.message
    assert "pw-s3cret-4242" not in str(problem)
    assert "pw-s3cret-4242" not in settings.consul.address


@pytest_twisted.ensureDeferred
async def test_403_is_reported_once_with_the_permission_and_counted(tmp_path):
    """A token without service:read on the gateway: one log line naming the endpoint and
    the permission it needs (as formatted, so an empty value fails), every refusal
    counted, the source unhealthy, no snapshot published. (The Consul double answers
    403 the way a real agent does for an ACL-denied request.)"""
    double = ConsulDouble(reactor, jitter=False)
    await double.start()
    site = _site(
        tmp_path, address=double.address, retry_min="0.02s", retry_max="0.05s", register=False
    )
    site.reactor = reactor  # real HTTP on loopback
    double.deny("/v1/catalog/gateway-services")
    logged: list[str] = []
    from twisted.logger import Logger, formatEvent

    site.log = Logger(observer=lambda e: logged.append(formatEvent(e)))
    source = ConsulCatalogSource(site)
    published: list[Any] = []
    first = source.start(published.append)
    with pytest.raises(ConsulError, match="403") as raised:
        await first
    assert raised.value.kind == "acl_denied" and raised.value.status == 403
    assert raised.value.endpoint == "gateway-services"

    def denied() -> float:
        value = site.metrics.registry.get_sample_value(
            "tgw_consul_errors_total",
            {"site": "main", "plugin": "consul_catalog", "endpoint": "gateway-services",
             "kind": "acl_denied"},
        )  # fmt: skip
        return value or 0.0

    for _ in range(250):  # retries every 20-50 ms: three refusals come well within 5 s
        if denied() >= 3:
            break
        d: Deferred[None] = Deferred()
        reactor.callLater(0.02, d.callback, None)
        await d
    await source.stop()
    await double.stop()
    assert denied() >= 3
    acl_lines = [line for line in logged if "403" in line]
    assert len(acl_lines) == 1, acl_lines
    assert "gateway-services" in acl_lines[0]
    assert "the token needs service:read on the gateway name;" in acl_lines[0]
    assert source.health().last_error and "403" in source.health().last_error
    assert published == []
