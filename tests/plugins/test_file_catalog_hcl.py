"""The file catalog reads Consul config entries written in HCL (``.hcl``, as
``consul config write`` takes them) as well as JSON: same shapes, same validation, and
errors naming the file and the key (or the line, when the HCL does not parse)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest_twisted

from gwcore.plugins.file_catalog import decode_catalog_file
from gwcore.runtime.config_check import check_config
from tests.harness import Gateway, hello, in_thread, intentions, request, sni_for, write_json
from tests.plugins.test_tgw_subsets import instance, sni

GATEWAY_HCL = """
Kind = "terminating-gateway"
Name = "legacy-gw"
# blocks, as operators write them
Services {
  Name = "s2"
}
Services {
  Name   = "ldap"
  CAFile = ""
}
"""

RESOLVER_HCL = """
Kind          = "service-resolver"
Name          = "s2"
DefaultSubset = "v1"
ConnectTimeout = "3s"
Subsets = {
  v1 = {
    Filter = "Service.Meta.version == v1"
  }
  "v2" = {
    filter       = "Service.Meta.version == \\"v2\\""
    only_passing = true
  }
}
LoadBalancer {
  Policy = "maglev"
  HashPolicies = [{ SourceIP = true }]
}
"""


def test_hcl_entries_decode_like_their_json(tmp_path: Path):
    """Attributes, objects, a single block (an object), snake_case keys and escaped
    quotes come out as Consul's decoder reads them."""
    path = tmp_path / "resolver.hcl"
    _, (resolver,), problems = decode_catalog_file(path, RESOLVER_HCL.encode())
    assert problems == []
    assert set(resolver.subsets) == {"v1", "v2"} and resolver.subsets["v2"].only_passing
    assert resolver.default_subset == "v1" and resolver.settings.connect_timeout == 3.0
    assert resolver.settings.load_balancer.policy == "maglev"
    assert resolver.settings.load_balancer.hashes_source_ip


def test_bad_hcl_names_the_file_and_line_and_bad_keys_name_the_key(tmp_path: Path):
    """HCL that does not parse: a problem with the file and line. HCL that parses but
    breaks a rule: the same problem a JSON file gets, naming file and key."""
    path = tmp_path / "r.hcl"
    _, _, problems = decode_catalog_file(path, b'Kind = "service-resolver"\nName = \n')
    assert len(problems) == 1 and str(problems[0]).startswith(f"{path}: line 2: not valid HCL")
    bad = RESOLVER_HCL.replace('Policy = "maglev"', 'Policy = "fastest"')
    _, resolvers, problems = decode_catalog_file(path, bad.encode())
    assert resolvers == ()
    assert [str(p) for p in problems] == [
        f"{path}: LoadBalancer.Policy: Bad LoadBalancer policy: 'fastest' is not supported"
    ]


def test_check_config_reports_a_bad_hcl_entry(tmp_path: Path):
    """`tgw check-config` names the .hcl file and key."""
    gw = Gateway(tmp_path)
    gw.catalog.mkdir(parents=True)
    (gw.catalog / "gateway.hcl").write_text(GATEWAY_HCL.replace('Name = "s2"', 'Nmae = "s2"'))
    (tmp_path / "ca").mkdir()
    texts = [str(p) for p in check_config(gw.write_config()).problems]
    assert any("gateway.hcl: Services[0].Nmae" in t for t in texts), texts


@pytest_twisted.ensureDeferred
async def test_a_gateway_fed_by_hcl_entries_serves_subsets(gateway: Gateway, upstreams):
    """terminating-gateway and service-resolver entries in HCL, registrations in JSON:
    the subset routes work; editing the .hcl file is applied live."""
    one, two = upstreams(hello(b"v1 here")), upstreams(hello(b"v2 here"))
    gateway.catalog.mkdir(parents=True)
    (gateway.catalog / "gateway.hcl").write_text(GATEWAY_HCL)
    (gateway.catalog / "resolver.hcl").write_text(RESOLVER_HCL)
    write_json(
        gateway.catalog / "catalog.json",
        [intentions("s2", ("web", "allow")), instance(one.port, "v1"), instance(two.port, "v2")],
    )
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(request, gateway.port, sni("v2"), files) == b"v2 here"
    assert await in_thread(request, gateway.port, sni(), files) == b"v1 here"
    assert sni_for("ldap") in dict(gateway.site.current()[0])
    (gateway.catalog / "resolver.hcl").write_text(
        RESOLVER_HCL.replace('DefaultSubset = "v1"', 'DefaultSubset = "v2"')
    )
    await gateway.wait_for(
        lambda: [e.port for e in dict(gateway.site.current()[0])[sni()].endpoints] == [two.port]
    )
    assert await in_thread(request, gateway.port, sni(), files) == b"v2 here"


# Consul's documented service-intentions examples (service-intentions config entry
# reference: "REST Access", "gRPC", "L4 and L7"), written as `consul config write`
# takes them: HCL v1, a block (HTTP { ... }) inside an object inside a list.
REST_HCL = """
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name = "admin-dashboard"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/v2"
          Methods    = ["GET", "PUT", "POST", "DELETE", "HEAD"]
        }
      }
    ]
  },
  {
    Name = "report-generator"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/v2/widgets"
          Methods    = ["GET"]
        }
      }
    ]
  }
  # NOTE: a default catch-all based on the default ACL policy will apply to
  # unmatched connections and requests. Typically this will be DENY.
]
"""

GRPC_HCL = """
Kind = "service-intentions"
Name = "billing"
Sources = [
  {
    Name = "frontend-web"
    Permissions = [
      {
        Action = "deny"
        HTTP {
          PathExact = "/mycompany.BillingService/IssueRefund"
        }
      },
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/mycompany.BillingService/"
        }
      }
    ]
  },
  {
    Name = "support-portal"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathPrefix = "/mycompany.BillingService/"
        }
      }
    ]
  }
]
"""

L4_L7_HCL = """
Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name   = "hackathon-project"
    Action = "deny"
  },
  {
    Name   = "web"
    Action = "allow"
  },
  {
    Name = "nightly-reconciler"
    Permissions = [
      {
        Action = "allow"
        HTTP {
          PathExact = "/v1/reconcile-data"
          Methods   = ["POST"]
          Header {
            Name    = "x-reconcile"
            Present = true
          }
        }
      }
    ]
  }
]
"""


def test_consuls_documented_l7_intention_examples_load_from_hcl(tmp_path: Path):
    """Consul's own service-intentions examples in HCL v1 (``HTTP { ... }`` blocks inside
    objects inside lists, which python-hcl2 refuses) load as their JSON form does:
    every source, every permission, methods and a single ``Header`` block as a list."""
    from gwcore.policy.hcl_entries import decode_hcl

    rest, problem = decode_hcl("rest.hcl", REST_HCL.encode())
    assert problem is None
    assert json.loads(rest)["Sources"][0]["Permissions"] == [
        {
            "Action": "allow",
            "HTTP": {"PathPrefix": "/v2", "Methods": ["GET", "PUT", "POST", "DELETE", "HEAD"]},
        }
    ]
    grpc, problem = decode_hcl("grpc.hcl", GRPC_HCL.encode())
    assert problem is None
    assert [p["HTTP"] for p in json.loads(grpc)["Sources"][0]["Permissions"]] == [
        {"PathExact": "/mycompany.BillingService/IssueRefund"},
        {"PathPrefix": "/mycompany.BillingService/"},
    ]
    mixed, problem = decode_hcl("mixed.hcl", L4_L7_HCL.encode())
    assert problem is None
    sources = json.loads(mixed)["Sources"]
    assert [s.get("Action") for s in sources] == ["deny", "allow", None]
    assert sources[2]["Permissions"][0]["HTTP"]["Header"] == [
        {"Name": "x-reconcile", "Present": True}
    ]
    for name, text in (("rest", REST_HCL), ("grpc", GRPC_HCL), ("mixed", L4_L7_HCL)):
        path = tmp_path / f"{name}.hcl"
        path.write_text(text)
        docs, _, problems = decode_catalog_file(path, text.encode())
        assert problems == [] and len(docs.intentions) == 1, (name, problems)


def test_hcl_that_neither_parser_takes_names_the_file_and_line(tmp_path: Path):
    """A file broken for both HCL dialects is still reported with the file and line."""
    from gwcore.policy.hcl_entries import decode_hcl

    value, problem = decode_hcl("bad.hcl", b'Kind = "service-intentions"\nSources = [ {\n')
    assert value is None and problem is not None
    assert problem.origin == "bad.hcl" and "HCL" in problem.message
