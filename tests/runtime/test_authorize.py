"""gwcore.runtime.authorize: the authorization step on its own, without a site: deny
overrides, all-abstain falls to the default policy, a raising or slow engine is a deny
with its reason, and every decision is counted (in memory, ``MemoryReactorClock``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.contract.providers import AuthzRequest
from gwcore.policy.model import Decision, Destination, ServiceName, SpiffeID, Verdict
from gwcore.runtime.authorize import Authorizer
from gwcore.testing import TRUST_DOMAIN, site_config
from tests.harness import sample_sum

BILLING = ServiceName("billing")


class Engine:
    def __init__(self, name: str, answer: Any) -> None:
        self.name = name
        self.answer = answer

    def authorize(self, request: AuthzRequest) -> Any:
        if self.answer == "raise":
            raise RuntimeError("exploded")
        if self.answer == "hang":
            return Deferred()
        return Decision(Verdict(self.answer), self.name, f"{self.name} says {self.answer}")


def request() -> AuthzRequest:
    return AuthzRequest(
        site="main",
        gateway_name="legacy-gw",
        datacenter="dc1",
        source=SpiffeID(TRUST_DOMAIN, "default", "dc1", "web"),
        destination=Destination(BILLING, "dc1", ()),
        sni="billing",
        client_address="127.0.0.1",
        client_port=50000,
        gateway_address="127.0.0.1",
        gateway_port=8443,
    )


def authorizer(tmp_path: Path, *engines: Engine, **site: Any) -> tuple[Authorizer, Any]:
    metrics = GatewayMetrics()
    reactor = MemoryReactorClock()
    step = Authorizer(
        site_config(tmp_path, **site), reactor, metrics, SiteChildren(metrics, "main"), Logger()
    )
    step.engines = list(engines)
    return step, reactor


def decided(d: Deferred[Decision]) -> Decision:
    results: list[Decision] = []
    d.addCallback(results.append)
    assert results, "the decision is not there yet"
    return results[0]


@pytest.mark.parametrize(
    ("answers", "verdict", "engine"),
    [
        (["allow", "deny"], Verdict.DENY, "e1"),
        (["deny", "allow"], Verdict.DENY, "e0"),
        (["abstain", "allow"], Verdict.ALLOW, "e1"),
        (["abstain", "abstain"], Verdict.DENY, "default"),
        ([], Verdict.DENY, "default"),
        (["raise", "allow"], Verdict.DENY, "e0"),
    ],
)
def test_engines_combine_deny_overrides_default_deny(
    tmp_path: Path, answers: list[str], verdict: Verdict, engine: str
) -> None:
    """Deny overrides an allow in any order; nobody deciding means the default (deny);
    an engine that raises denies."""
    step, _ = authorizer(tmp_path, *(Engine(f"e{i}", a) for i, a in enumerate(answers)))
    decision = decided(step.decide(request()))
    assert (decision.verdict, decision.engine) == (verdict, engine)
    counted = sample_sum(
        step.metrics.registry,
        "tgw_authz_decisions_total",
        {"site": "main", "service": "billing", "engine": engine, "decision": verdict.value},
    )
    assert counted == 1.0


def test_a_slow_engine_is_a_deny_after_authz_timeout(tmp_path: Path) -> None:
    """An engine that never answers is a deny naming the timeout once ``authz_timeout``
    passes on the injected clock, and its error is counted."""
    step, reactor = authorizer(tmp_path, Engine("slow", "hang"), authz_timeout="2s")
    d = step.decide(request())
    assert not d.called
    reactor.advance(2.0)
    decision = decided(d)
    assert decision.verdict is Verdict.DENY and "timed out after 2s" in decision.reason
    errors = sample_sum(
        step.metrics.registry,
        "tgw_authz_errors_total",
        {"site": "main", "engine": "slow", "reason": "timeout"},
    )
    assert errors == 1.0
