"""The ``tgw`` command: ``run``, ``check-config``, ``connect``, ``explain``, ``plugins``,
``version``.

``tgw run`` runs the gateway in the foreground through twistd (the same service as
``twistd -n tgw``, without a pidfile); the other subcommands are the tools around it.
Every subcommand finds the config the same way (gwcore.runtime.config_discovery).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gwcore import __version__
from gwcore.policy.config import LOG_LEVELS


def _config_path(explicit: str | None) -> str | None:
    """``--config``, else ``TGW_CONFIG``, else ``etc/tgw.toml``; ``None`` (with a hint on
    standard error) when none is there."""
    from gwcore.runtime.config_discovery import ConfigNotFoundError, discover_config

    try:
        return discover_config(explicit)
    except ConfigNotFoundError as e:
        print(f"tgw: {e}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    from gwcore.cli.check import run_check_config

    path = _config_path(args.file or args.config)
    return 1 if path is None else run_check_config(args, path)


def _run(args: argparse.Namespace) -> int:
    """The gateway in the foreground: ``twistd --pidfile= -n tgw --config FILE``."""
    path = _config_path(args.config)
    if path is None:
        return 1
    from twisted.scripts.twistd import ServerOptions, runApp

    argv = ["--pidfile=", "-n"]
    if args.logfile:
        argv.append(f"--logfile={args.logfile}")
    argv += ["tgw", "--config", path]
    if args.log_level:
        argv += ["--log-level", args.log_level]
    options = ServerOptions()
    options.parseOptions(argv)
    runApp(options)
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
        args.config = _config_path(args.config)
        if args.config is None:
            return 1
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
    query: list[tuple[str, str]] = [("source", args.source), ("destination", args.destination)]
    if args.site:
        query.append(("site", args.site))
    if args.method:
        query.append(("method", args.method))
    if args.path:
        query.append(("path", args.path))
    query += [("header", h) for h in args.header or ()]
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
    if "request" in answer:
        asked = answer["request"]
        print(f"  request: {asked['method']} {asked['path']} (sent as {asked['original_path']})")
        if asked.get("note"):
            print(f"  note: {asked['note']}")
    for engine in answer["engines"]:
        print(f"  {engine['engine']}: {engine['verdict']} - {engine['reason']}")
    print(f"  decided by {final['engine']}: {final['reason']}")
    # With workers = N every worker answers (gwcore.net.admin_workers): all must allow.
    verdicts = {
        i: (d or {}).get("verdict", "no answer") for i, d in answer.get("workers", {}).items()
    }
    if verdicts:
        print("  workers: " + ", ".join(f"{i}: {v}" for i, v in sorted(verdicts.items())))
    allowed = final["verdict"] == "allow" and all(v == "allow" for v in verdicts.values())
    return 0 if allowed else 2


def _connect(args: argparse.Namespace) -> int:
    from gwcore.cli.connect import run_connect

    args.config = _config_path(args.config)
    return 1 if args.config is None else run_connect(args)


def _plugins(args: argparse.Namespace) -> int:
    from gwcore.cli.plugin_listing import format_listing, installed_plugins, stack_listing

    stacks, paths, problems = stack_listing(args.config) if args.config else ([], [], [])
    for line in format_listing(installed_plugins(paths)):
        print(line)
    for line in stacks:
        print(line)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgw", description="tgw terminating gateway tools")
    parser.add_argument("--version", action="version", version=f"tgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    discovered = "default: $TGW_CONFIG, else etc/tgw.toml in the working directory"

    run = sub.add_parser(
        "run",
        help="run the gateway in the foreground (what twistd -n tgw runs, without a pidfile)",
    )
    run.add_argument("--config", "-c", help=f"the TOML config ({discovered})")
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="the application log's level (default: [gateway] log_level, else info)",
    )
    run.add_argument(
        "--logfile",
        help='write the application log here (default: standard error; "-" standard output)',
    )
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file and explain it")
    check.add_argument("file", nargs="?", help=f"the TOML config ({discovered})")
    check.add_argument("--config", "-c", help="the TOML config (same as FILE)")
    check.add_argument(
        "--strict", action="store_true", help="count warnings (cross-checks) as problems"
    )
    check.add_argument("--json", action="store_true", help="print one JSON document")
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
    connect.add_argument("--config", help=f"gateway config ({discovered})")
    connect.add_argument("--site", help="site in the config (default: the first)")
    connect.add_argument(
        "--subset",
        help="service-resolver subset to dial (default: the resolver's DefaultSubset in the "
        "site's file catalog; '' for the unsubsetted name)",
    )
    connect.add_argument(
        "--gateway", help="client endpoint of the gateway (default: from the site's listen)"
    )
    connect.add_argument("--datacenter", help="override the site's datacenter")
    connect.add_argument("--trust-domain", help="override the site's trust domain")
    connect.add_argument(
        "--create-ca",
        action="store_true",
        help="create the built-in CA when it does not exist, even for another trust domain "
        "or a site without builtin_ca (refused otherwise)",
    )
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
    explain.add_argument("--method", help="HTTP method of a request to decide (default GET)")
    explain.add_argument(
        "--path", help="request path (and query) to decide, normalised as the gateway would"
    )
    explain.add_argument(
        "--header",
        action="append",
        metavar='"NAME: VALUE"',
        help="a request header (repeatable); with --method/--path at an L7 destination the "
        "answer names the intention permission that decides",
    )
    explain.add_argument("--config", help=f"config naming the admin endpoint ({discovered})")
    explain.add_argument(
        "--admin", help="admin URL, e.g. http://127.0.0.1:19000 (overrides --config)"
    )
    explain.set_defaults(func=_explain)

    listing = sub.add_parser(
        "plugins",
        help="list installed plugins and their hooks; with --config, each site's stack",
    )
    listing.add_argument("--config", help="also show each site's stack in load order")
    listing.set_defaults(func=_plugins)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(__version__) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
