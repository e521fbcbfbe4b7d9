"""tgw plugin: an authorization engine by client CIDR and SPIFFE ID glob.

Configured in ``[sites.NAME.cidr_authz]``::

    rules = [
      { action = "deny", source = "spiffe://*/ns/default/dc/*/svc/batch" },
      { action = "allow", source = "spiffe://*/svc/*", cidrs = ["127.0.0.0/8"] },
    ]

The first matching rule decides; none matching is an abstain. In ``source``, ``*``
matches any run of characters within one ``/``-separated segment (never across one).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from gwcore.contract.hookspecs import hookimpl
from gwcore.policy.config import SectionReader
from gwcore.policy.model import Decision, Verdict

NAME = "cidr_authz"
ACTIONS = {"allow": Verdict.ALLOW, "deny": Verdict.DENY}


def segment_matches(pattern: str, text: str) -> bool:
    """``*`` matches any run of characters; everything else literally (no regex, linear
    in the pieces: the text is a client's certificate URI)."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == text
    if not text.startswith(pieces[0]) or not text.endswith(pieces[-1]):
        return False
    position, end = len(pieces[0]), len(text) - len(pieces[-1])
    if position > end:
        return False
    for piece in pieces[1:-1]:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def glob_matches(pattern: str, uri: str) -> bool:
    """Segment by segment, so ``*`` never spans a ``/``."""
    want, have = pattern.split("/"), uri.split("/")
    return len(want) == len(have) and all(map(segment_matches, want, have))


@dataclass(frozen=True)
class Rule:
    action: Verdict
    source: str | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    label: str

    def matches(self, uri: str, address: str) -> bool:
        if self.source is not None and not glob_matches(self.source, uri):
            return False
        if self.networks:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            return any(ip in network for network in self.networks)
        return True


def read_rules(site_config: Any) -> tuple[list[Rule], list[Any]]:
    reader = site_config.reader(NAME)
    raw = reader.raw("rules", [])
    rules: list[Rule] = []
    if not isinstance(raw, list):
        reader.problem("rules", "must be a list of tables")
        raw = []
    for index, table in enumerate(raw):
        key = f"rules[{index}]"
        if not isinstance(table, dict):
            reader.problem(key, "must be a table")
            continue
        rule = SectionReader(reader.file, reader.key(key), table)
        action = rule.string("action", required=True, choices=tuple(ACTIONS))
        source = rule.string("source")
        networks = []
        for cidr in rule.strings("cidrs"):
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                rule.problem("cidrs", f"{cidr!r} is not a CIDR")
        if source is None and not networks:
            rule.problem("source", "a rule needs a source, cidrs, or both")
        reader.problems.extend(rule.finish())
        if action in ACTIONS:
            rules.append(Rule(ACTIONS[action], source, tuple(networks), key))
    return rules, reader.finish()


class CidrEngine:
    name = NAME
    policy_version = "1"

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    def start(self, changed: Any) -> None:
        return None  # rules change only with the config (a reload rebuilds the engine)

    def stop(self) -> None:
        return None

    def authorize(self, request: Any) -> Decision:
        for rule in self.rules:
            if rule.matches(request.source.uri, request.client_address):
                return Decision(rule.action, NAME, f"{rule.label} matched")
        return Decision(Verdict.ABSTAIN, NAME, "no rule matched")


@hookimpl
def tgw_validate_site_config(site: Any) -> list[Any]:
    return read_rules(site)[1]


@hookimpl
def tgw_authorization_engines(site: Any) -> list[CidrEngine]:
    return [CidrEngine(read_rules(site.config)[0])]
