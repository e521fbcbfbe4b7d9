"""``tgw check-config``: every start-up check, then the cross-checks, explained.

Problems stop a start; warnings (gwcore.runtime.crosscheck) do not, unless ``--strict``.
Text output: ``FILE: OK`` and a summary per site on standard output, or one
``FILE: KEY: MESSAGE`` line per problem and a count on standard error; warnings are
``FILE: KEY: warning: MESSAGE`` lines on standard error. ``--json`` prints one JSON
document on standard output instead (same exit status).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gwcore.contract.plugin_host import ESSENTIAL_PLUGINS
from gwcore.policy.config import ConfigProblem
from gwcore.runtime.config_check import CheckedConfig, check_config


def engines_of(checked: CheckedConfig, key: str) -> list[str]:
    """The site's deciding engines (plugins implementing ``tgw_authorization_engines``)."""
    stack = checked.stacks.get(key)
    if stack is None:
        return []
    impls = stack.pm.hook.tgw_authorization_engines.get_hookimpls()
    names = {i.plugin_name for i in impls} - set(ESSENTIAL_PLUGINS)
    return [name for name in stack.plugin_names if name in names]


def site_summary(checked: CheckedConfig, key: str) -> dict[str, Any]:
    """One site, as ``--json`` prints it (and the text summary reads it)."""
    assert checked.config is not None
    site = checked.config.site(key)
    stack = checked.stacks.get(key)
    findings = checked.findings.get(key)
    destinations = None
    if findings is not None and findings.destinations is not None:
        destinations = [
            {
                "name": str(d.service),
                "datacenter": d.datacenter,
                "endpoints": len(d.endpoints),
                "tls": d.tls.mode.value,
            }
            for d in findings.destinations
        ]
    return {
        "key": key,
        "role": site.role,
        "name": site.name,
        "datacenter": site.datacenter,
        "trust_domain": site.trust_domain,
        "listen": site.listen,
        "default_policy": site.default_policy,
        "plugins": list(stack.plugin_names) if stack else [],
        "engines": engines_of(checked, key),
        "destinations": destinations,
    }


def _problem(p: ConfigProblem) -> dict[str, str]:
    return {"file": p.file, "key": p.key, "message": p.message}


def run_check_config(args: argparse.Namespace, path: str) -> int:
    checked = check_config(path)
    failed = not checked.ok or checked.config is None or (args.strict and checked.warnings)
    if args.json:
        body = {
            "file": path,
            "ok": not failed,
            "problems": [_problem(p) for p in checked.problems],
            "warnings": [_problem(p) for p in checked.warnings],
            "sites": [site_summary(checked, k) for k in checked.stacks],
            "admin": checked.config.admin if checked.config else None,
        }
        print(json.dumps(body, indent=2))
        return 1 if failed else 0
    for warning in checked.warnings:
        print(f"{warning.file}: {warning.key}: warning: {warning.message}", file=sys.stderr)
    if failed:
        for problem in checked.problems:
            print(problem, file=sys.stderr)
        count = len(checked.problems) + (len(checked.warnings) if args.strict else 0)
        extra = f" (--strict: {len(checked.warnings)} warning(s) count)" if args.strict else ""
        print(f"{path}: {count} problem(s){extra}", file=sys.stderr)
        return 1
    _explain(checked, path)
    return 0


def _explain(checked: CheckedConfig, path: str) -> None:
    config = checked.config
    assert config is not None
    warned = f" ({len(checked.warnings)} warning(s))" if checked.warnings else ""
    print(f"{path}: OK{warned}")
    for site in config.sites:
        summary = site_summary(checked, site.key)
        print(
            f"  site {site.key}: {site.role} gateway {site.name!r} in {site.datacenter}, "
            f"trust domain {site.trust_domain}, listen {site.listen}, "
            f"default_policy {site.default_policy}"
        )
        print(f"    plugins: {', '.join(summary['plugins'])}")
        hop = site.plugin_section("mesh_hop")
        configured = ", ".join(sorted(hop.get("gateways", {}))) or "none"
        if site.role == "mesh":
            print(
                f"    mesh: SNI pass-through, never terminates TLS and holds no key; names in "
                f"{site.datacenter} go to the service's Connect endpoints from the catalog, "
                f"names in another datacenter to that datacenter's mesh gateways (catalog "
                f"mesh-gateway services; configured for: {configured})"
                + ("; Consul server names (WAN federation)" if hop.get("wan_federation") else "")
            )
            continue
        engines = ", ".join(summary["engines"]) or "none"
        print(f"    deciding engines: {engines} (all abstain: {site.default_policy})")
        if summary["destinations"] is None:
            print("    destinations: from the catalog at run time")
        else:
            shown = [
                f"{d['name']} ({d['endpoints']} endpoint{'s' * (d['endpoints'] != 1)}, "
                f"{d['tls']}{'' if d['datacenter'] == site.datacenter else ', ' + d['datacenter']})"
                for d in summary["destinations"]
            ]
            print(f"    destinations: {', '.join(shown) or 'none'}")
        if hop:
            print(
                f"    destinations in other datacenters: mesh-gateway hop as {site.name!r}, "
                f"mode {hop.get('mode', 'none')} (configured mesh gateways for: {configured})"
            )
    if config.admin:
        print(f"  admin: {config.admin}")
