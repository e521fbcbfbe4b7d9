"""gwcore.runtime.l7_tunnels: which answers close an open tunnel.

The site, its re-check and the tunnel's exchange are small stand-ins (what
:class:`LiveTunnels` reads of them); the decisions are real :class:`Decision` values
delivered through real Deferreds, as an engine answering asynchronously (OPA over
HTTP) delivers them. The end-to-end behaviour, through a real gateway, is
``tests/runtime/test_l7_tunnel_recheck.py``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred

from gwcore.policy.model import Decision, Verdict
from gwcore.runtime.l7_tunnels import LiveTunnels, policy_mark

DENY = Decision(Verdict.DENY, "opa", "path not allowed")
ALLOW = Decision(Verdict.ALLOW, "opa", "ok")


class _Recheck:
    def __init__(self, site: Any) -> None:
        self.site = site
        self.epoch = 0
        self.closed: list[tuple[Any, str, str]] = []

    def authority(self) -> Any:
        return self.site

    def close(self, conn: Any, cause: str, detail: str) -> None:
        self.closed.append((conn, cause, detail))


class _Site:
    def __init__(self) -> None:
        self.recheck = _Recheck(self)


class _Link:
    """The connection's starter: each decide() answers with the next Deferred."""

    def __init__(self) -> None:
        self.asked: list[Deferred[Decision]] = []

    def decide(self, facts: Any) -> Deferred[Decision]:
        d: Deferred[Decision] = Deferred()
        self.asked.append(d)
        return d


class _Exchange:
    def __init__(self, site: _Site) -> None:
        self.conn = SimpleNamespace(decision=None)
        self.link = _Link()
        self.facts = "facts"
        self.decision = ALLOW
        self.policy_mark = policy_mark(site)


def _open() -> tuple[_Site, LiveTunnels, _Exchange]:
    site = _Site()
    tunnels = LiveTunnels(site)
    exchange = _Exchange(site)
    tunnels.opened(exchange)
    assert exchange.link.asked == []  # decided under the policy of now: not asked again
    return site, tunnels, exchange


def test_a_deny_under_the_policy_of_now_closes_the_tunnel_as_policy_revoked() -> None:
    """An asynchronous deny that arrives while its policy is still in force closes the
    tunnel's connection with cause ``policy_revoked``, naming the engine and reason,
    and becomes the exchange's decision (its record's)."""
    site, tunnels, exchange = _open()
    tunnels.recheck_all()
    exchange.link.asked[0].callback(DENY)
    assert site.recheck.closed == [(exchange.conn, "policy_revoked", "opa: path not allowed")]
    assert exchange.decision is DENY


def test_an_answer_superseded_by_another_change_is_dropped() -> None:
    """A deny asked before a second policy change and arriving after it closes nothing:
    the second change's own re-check decides (here: allow)."""
    site, tunnels, exchange = _open()
    tunnels.recheck_all()
    site.recheck.epoch += 1  # another change while the first answer is in flight
    tunnels.recheck_all()
    first, second = exchange.link.asked
    first.callback(DENY)
    second.callback(ALLOW)
    assert site.recheck.closed == []


def test_an_engine_failure_is_a_deny_and_an_ended_tunnel_is_left_alone() -> None:
    """An engine failing on the re-check closes the tunnel (a failure is a deny); a
    deny arriving for a tunnel that already ended closes nothing."""
    site, tunnels, exchange = _open()
    tunnels.recheck_all()
    exchange.link.asked[0].errback(RuntimeError("opa unreachable"))
    ((conn, cause, detail),) = site.recheck.closed
    assert conn is exchange.conn and cause == "policy_revoked" and "opa unreachable" in detail

    site, tunnels, exchange = _open()
    tunnels.recheck_all()
    tunnels.ended(exchange)
    exchange.link.asked[0].callback(DENY)
    assert site.recheck.closed == [] and len(tunnels) == 0


def test_a_tunnel_decided_before_a_change_is_decided_again_as_it_opens() -> None:
    """The upgrade's decision was taken under an older policy (epoch) than the one in
    force when its 101 arrives: opening the tunnel asks again, and a deny closes it."""
    site = _Site()
    tunnels = LiveTunnels(site)
    exchange = _Exchange(site)
    site.recheck.epoch += 1
    tunnels.opened(exchange)
    exchange.link.asked[0].callback(DENY)
    assert [cause for _, cause, _ in site.recheck.closed] == ["policy_revoked"]
