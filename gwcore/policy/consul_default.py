"""Consul's decision when no intention matches, read from ``GET /v1/agent/self``.

Rules (the agent's authorize handler, ``agent/connect_auth.go``; reference §2, §6):

1. The agent's ``default_intention_policy`` (``allow`` or ``deny``), when set, decides:
   reason ``Default intention policy``.
2. Otherwise the ACL default decides: ``allow`` when ACLs are disabled, else the ACL
   ``default_policy``: reason ``Default behavior configured by ACLs``.
3. An answer tgw cannot read (no ``DebugConfig``, a policy it does not know) is a
   **deny**: an unreadable agent must not open the gateway.

``/v1/agent/self`` shows the agent's runtime configuration under ``DebugConfig``:
``ACLsEnabled``, ``ACLResolverSettings.ACLDefaultPolicy`` and, on agents that have it,
``DefaultIntentionPolicy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

POLICIES = ("allow", "deny")
INTENTION_POLICY = "Default intention policy"
ACL_POLICY = "Default behavior configured by ACLs"


@dataclass(frozen=True, slots=True)
class AgentDefault:
    """The verdict (``allow``/``deny``) when no intention matches, and why."""

    policy: str
    reason: str
    readable: bool = True

    def __str__(self) -> str:
        return f"{self.policy} ({self.reason})"


UNREAD = AgentDefault("deny", "the agent's default is not known yet", readable=False)


def _field(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def agent_default(body: Any) -> AgentDefault:
    """The effective default of the agent whose ``/v1/agent/self`` answer is ``body``."""
    debug = _field(body, "DebugConfig")
    if not isinstance(debug, Mapping):
        return AgentDefault("deny", "/v1/agent/self has no DebugConfig", readable=False)
    intention = debug.get("DefaultIntentionPolicy")
    if isinstance(intention, str) and intention.lower() in POLICIES:
        return AgentDefault(intention.lower(), f"{INTENTION_POLICY}: {intention.lower()}")
    enabled = debug.get("ACLsEnabled")
    if enabled is False:
        return AgentDefault("allow", f"{ACL_POLICY}: ACLs are disabled")
    acl = _field(debug, "ACLResolverSettings", "ACLDefaultPolicy")
    if enabled is True and isinstance(acl, str) and acl.lower() in POLICIES:
        return AgentDefault(acl.lower(), f"{ACL_POLICY}: acl.default_policy = {acl.lower()}")
    return AgentDefault(
        "deny", "/v1/agent/self names no default policy tgw can read", readable=False
    )
