"""Before twistd starts anything: every configured TCP port that is already in use.

A busy port found while starting would stop the gateway at the first one, with
Twisted's wording. Checked first, every busy ``listen`` is reported at once, each
naming its key: ``FILE: sites.main.listen: 127.0.0.1:8443 is already in use``.
A port taken between this check and the real listen still fails the start (the
``tgw: could not start`` line).
"""

from __future__ import annotations

import errno
import socket

from gwcore.net.fasttcp import parse_tcp
from gwcore.policy.config import ConfigProblem, GatewayConfig


def _listens(config: GatewayConfig) -> list[tuple[str, str]]:
    found = [(f"{site.prefix}.listen", site.listen) for site in config.sites]
    if config.admin:
        found.append(("gateway.admin", config.admin))
    if config.sample_service:
        found.append(("sample_service.listen", config.sample_service.listen))
    return found


def busy_ports(config: GatewayConfig) -> list[ConfigProblem]:
    """A problem for each ``tcp``/``tcp6`` endpoint whose port cannot be bound now."""
    problems = []
    for key, endpoint in _listens(config):
        parsed = parse_tcp(endpoint)
        if parsed is None or parsed[0] == 0:
            continue
        port, interface, _ = parsed
        family = (
            socket.AF_INET6 if endpoint.startswith("tcp6:") or ":" in interface else socket.AF_INET
        )
        host = interface or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As Twisted's listening sockets do, so a port in TIME_WAIT is not "busy".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                why = (
                    "is already in use"
                    if e.errno == errno.EADDRINUSE
                    else f"cannot be bound: {e.strerror}"
                )
                problems.append(ConfigProblem(config.file, key, f"{shown} {why}"))
    return problems
