"""The ``tgw`` command: ``check-config``, ``connect``, ``version``.

The gateway itself runs under twistd (``twistd -n tgw --config FILE``); this
command holds the tools around it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gwcore import __version__


def _check_config(args: argparse.Namespace) -> int:
    from gwcore.runtime.config_check import check_config

    checked = check_config(args.file)
    if not checked.ok or checked.config is None:
        for problem in checked.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(checked.problems)} problem(s)", file=sys.stderr)
        return 1
    config = checked.config
    print(f"{args.file}: OK")
    for site in config.sites:
        stack = checked.stacks[site.key]
        print(
            f"  site {site.key}: {site.role} gateway {site.name!r} in {site.datacenter}, "
            f"trust domain {site.trust_domain}, listen {site.listen}, "
            f"default_policy {site.default_policy}"
        )
        print(f"    plugins: {', '.join(stack.plugin_names)}")
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
        elif hop:
            print(
                f"    destinations in other datacenters: mesh-gateway hop as {site.name!r}, "
                f"mode {hop.get('mode', 'none')} (configured mesh gateways for: {configured})"
            )
    if config.admin:
        print(f"  admin: {config.admin}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from gwcore.cli.connect import endpoint_address
    from gwcore.net.admin_guard import admin_token
    from gwcore.policy.config import ConfigError, load_config

    admin = args.admin
    token = ""
    if not admin:
        try:
            config = load_config(args.config)
            token = admin_token(config)
        except (ConfigError, ValueError) as e:
            print(e, file=sys.stderr)
            return 1
        if not config.admin:
            print(f"tgw explain: {args.config} has no [gateway] admin endpoint", file=sys.stderr)
            return 1
        host, port = endpoint_address(config.admin)
        admin = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    query = {"source": args.source, "destination": args.destination}
    if args.site:
        query["site"] = args.site
    url = f"{admin.rstrip('/')}/explain?{urllib.parse.urlencode(query)}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=10
        ) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as e:
        print(f"tgw explain: {json.load(e).get('error', e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(
            f"tgw explain: cannot reach the gateway's admin endpoint {admin}: {e}", file=sys.stderr
        )
        return 1
    final = answer["decision"]
    print(
        f"{answer['source']} -> {answer['destination']} (site {answer['site']}): {final['verdict']}"
    )
    for engine in answer["engines"]:
        print(f"  {engine['engine']}: {engine['verdict']} - {engine['reason']}")
    print(f"  decided by {final['engine']}: {final['reason']}")
    return 0 if final["verdict"] == "allow" else 2


def _connect(args: argparse.Namespace) -> int:
    from gwcore.cli.connect import run_connect

    return run_connect(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgw", description="tgw terminating gateway tools")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a config file and explain it")
    check.add_argument("file", help="path to the TOML config")
    check.set_defaults(func=_check_config)

    connect = sub.add_parser(
        "connect",
        help="a local client proxy: plain TCP in, mesh mTLS to the gateway out",
        description=(
            "Listen in plain TCP and, for each connection, open mTLS to the gateway with the "
            "upstream's SNI, presenting a client leaf for --service. The leaf comes from the "
            "gateway's built-in CA (same config and state dir) unless --cert/--key/--ca are given. "
            "The gateway must present the upstream's SPIFFE identity."
        ),
    )
    connect.add_argument("--service", required=True, help="the identity to present (e.g. web)")
    connect.add_argument("--upstream", required=True, help="the destination service (e.g. billing)")
    connect.add_argument(
        "--listen", required=True, help="endpoint string, e.g. tcp:9191:interface=127.0.0.1"
    )
    connect.add_argument(
        "--config", default="etc/tgw.toml", help="gateway config (default: %(default)s)"
    )
    connect.add_argument("--site", help="site in the config (default: the first)")
    connect.add_argument(
        "--gateway", help="client endpoint of the gateway (default: from the site's listen)"
    )
    connect.add_argument("--datacenter", help="override the site's datacenter")
    connect.add_argument("--trust-domain", help="override the site's trust domain")
    connect.add_argument("--cert", help="PEM client certificate (chain) instead of the built-in CA")
    connect.add_argument("--key", help="PEM private key for --cert")
    connect.add_argument("--ca", help="PEM trust roots to verify the gateway with (with --cert)")
    connect.set_defaults(func=_connect)

    explain = sub.add_parser(
        "explain",
        help="ask the running gateway which engine decides source -> destination, and why",
        description=(
            "Asks the running gateway's admin endpoint what every authorization engine of a "
            "site would decide for SOURCE -> DESTINATION, and the combined decision. "
            "With --config, the admin bearer token (admin_token[_file]) is sent. "
            "Exit status: 0 allow, 2 deny, 1 error."
        ),
    )
    explain.add_argument("--source", required=True, help="source service name (e.g. web)")
    explain.add_argument("--destination", required=True, help="destination service (e.g. billing)")
    explain.add_argument("--site", help="site in the config (default: the first)")
    explain.add_argument(
        "--config", default="etc/tgw.toml", help="config naming the admin endpoint"
    )
    explain.add_argument(
        "--admin", help="admin URL, e.g. http://127.0.0.1:19000 (overrides --config)"
    )
    explain.set_defaults(func=_explain)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(__version__) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
