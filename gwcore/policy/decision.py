"""Combining the decisions of a site's authorization engines into one.

Rules: engines are asked in stack order. Deny overrides: the first ``DENY`` wins, even
after an ``ALLOW``. Otherwise the first ``ALLOW`` wins. When every engine abstains (or
the stack has none) the site's ``default_policy`` decides, with engine ``"default"``
and a reason that keeps each engine's abstain reason, so a denial is explainable.
An engine that fails or times out counts as a deny (:func:`failure`), never as an
abstain: an outage must not fall through to a permissive default.
"""

from __future__ import annotations

from collections.abc import Sequence

from gwcore.policy.model import Decision, Verdict

DEFAULT_ENGINE = "default"
ERROR_PREFIX = "engine error: "

# "consul" means the consul_intentions engine decides as the agent would; when every
# engine abstained anyway (that engine cannot have), fail closed.
_DEFAULT_VERDICTS = {"allow": Verdict.ALLOW, "deny": Verdict.DENY, "consul": Verdict.DENY}


def combine(decisions: Sequence[Decision], default_policy: str) -> Decision:
    """One decision from the engines' decisions, given in engine (stack) order.

    ``default_policy`` is ``"allow"``, ``"deny"`` or ``"consul"`` (a deny here: the
    ``consul_intentions`` engine applies the agent's default; anything else raises ``ValueError``;
    the config layer has already validated it). The returned decision is one of the
    inputs unless every engine abstained.
    """
    if default_policy not in _DEFAULT_VERDICTS:
        raise ValueError(
            f"default_policy must be one of {', '.join(_DEFAULT_VERDICTS)}, not {default_policy!r}"
        )
    first_allow: Decision | None = None
    for decision in decisions:
        if decision.verdict is Verdict.DENY:
            return decision
        if decision.verdict is Verdict.ALLOW and first_allow is None:
            first_allow = decision
    if first_allow is not None:
        return first_allow
    if decisions:
        why = "; ".join(f"{d.engine}: {d.reason}" for d in decisions)
    else:
        why = "no engines in the stack"
    return Decision(
        _DEFAULT_VERDICTS[default_policy],
        DEFAULT_ENGINE,
        f"no engine decided ({why}); default_policy={default_policy}",
    )


def failure(engine: str, reason: str) -> Decision:
    """The deny that stands in for ``engine`` when it raised or timed out."""
    return Decision(Verdict.DENY, engine, ERROR_PREFIX + reason)
