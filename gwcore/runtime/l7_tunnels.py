"""Open WebSocket tunnels of one L7 step, decided again when the policy changes.

An upgrade is authorized as the request it starts as (``runtime.l7_exchange``); after
the ``101`` its connection is an opaque byte stream for as long as both peers want.
The connection-level re-check (:mod:`gwcore.runtime.recheck`) answers an L7
connection *decided per request* and never closes it, so a tunnel would outlive the
revocation of the intention that let it open. :class:`LiveTunnels` keeps each open
tunnel's exchange (its request facts: method, path, headers decided on) from the
switch until the tunnel ends; :meth:`LiveRecheck.policy_changed
<gwcore.runtime.recheck.LiveRecheck.policy_changed>` asks the engines of now about
every one of them again and closes those now denied, with close cause
``policy_revoked`` (the tunnel's record: status ``101``, ``error =
"policy_revoked"``).

A decision taken before a policy change whose ``101`` came after it (the re-check
ran while the tunnel was not registered yet) is asked again as the tunnel opens.
An answer arriving after yet another change is dropped: that change's re-check
decides instead.

Requests that are not upgraded are not re-checked, however long their response
streams (Envoy re-checks neither): ``docs/l7.md``, "Live policy changes".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gwcore.policy.decision import failure as engine_failure
from gwcore.policy.model import Decision


def policy_mark(site: Any) -> tuple[Any, int]:
    """Which policy is in force for ``site`` now: its authority and that one's epoch."""
    authority = site.recheck.authority()
    return authority, authority.recheck.epoch


class LiveTunnels:
    """The open tunnels of one L7 step (see the module docstring)."""

    def __init__(self, site: Any) -> None:
        self.site = site
        self._open: dict[int, Any] = {}  # id(exchange) -> exchange

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._open.values()))

    def opened(self, exchange: Any) -> None:
        """``exchange``'s ``101`` went out: its tunnel is live until :meth:`ended`."""
        self._open[id(exchange)] = exchange
        if getattr(exchange, "policy_mark", None) != policy_mark(self.site):
            self.recheck(exchange)  # decided under a policy that changed since

    def ended(self, exchange: Any) -> None:
        self._open.pop(id(exchange), None)

    def recheck_all(self) -> None:
        """The policy changed: decide every open tunnel again."""
        for exchange in self:
            self.recheck(exchange)

    def recheck(self, exchange: Any) -> None:
        mark = policy_mark(self.site)
        try:
            answer = exchange.link.decide(exchange.facts)
        except Exception as e:  # one tunnel's failure must not stop the others' re-check
            self._decided(engine_failure("recheck", repr(e)), exchange, mark)
            return
        if isinstance(answer, Decision):
            self._decided(answer, exchange, mark)
        else:
            answer.addCallbacks(
                self._decided, self._failed, (exchange, mark), None, (exchange, mark)
            )

    def _failed(self, failure: Any, exchange: Any, mark: tuple[Any, int]) -> None:
        # An engine failing is a deny (as for any request).
        self._decided(engine_failure("recheck", failure.getErrorMessage()), exchange, mark)

    def _decided(self, decision: Decision, exchange: Any, mark: tuple[Any, int]) -> None:
        if id(exchange) not in self._open or decision.allowed:
            return
        if mark != policy_mark(self.site):
            return  # superseded: the newer change's re-check decides
        conn = exchange.conn
        conn.decision = decision
        exchange.decision = decision
        self.site.recheck.close(conn, "policy_revoked", f"{decision.engine}: {decision.reason}")
