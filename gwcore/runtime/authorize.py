"""Step 3 of a connection's life, *authorize*: ask every engine of the site's stack.

Deny overrides; all abstain → the site's ``default_policy``; an engine that raises, fails
or outlives ``authz_timeout`` is a deny with that reason. The authorizer owns the engine
list and the decision metrics. Asking again when the policy changes under a decision in
flight, and re-checking live connections, is :mod:`gwcore.runtime.recheck`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.contract.plugin_checks import engine_answer, engine_error_reason
from gwcore.contract.providers import AuthorizationEngine, AuthzRequest
from gwcore.net.connection_facts import local_address, peer_certificate_der, requested_server_name
from gwcore.policy.config import SiteConfig
from gwcore.policy.decision import combine, failure
from gwcore.policy.model import Decision

if TYPE_CHECKING:
    from gwcore.net.terminator import DownstreamProtocol


class Authorizer:
    """The authorization step of one site; see the module docstring."""

    def __init__(
        self,
        config: SiteConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        children: SiteChildren,
        log: Logger,
    ) -> None:
        self.config = config
        self.name = config.key
        self.reactor = reactor
        self.metrics = metrics
        self.children = children
        self.log = log
        self.engines: list[AuthorizationEngine] = []

    def request(self, conn: DownstreamProtocol) -> AuthzRequest:
        """What the engines are asked about ``conn`` (identity and destination known)."""
        assert conn.identity is not None and conn.destination is not None and conn.info is not None
        gateway_address, gateway_port = local_address(getattr(conn, "transport", None))
        return AuthzRequest(
            site=self.name,
            gateway_name=self.config.name,
            datacenter=self.config.datacenter,
            source=conn.identity,
            destination=conn.destination,
            sni=conn.sni or "",
            client_address=conn.info.client_address,
            client_port=conn.info.client_port,
            gateway_address=gateway_address,
            gateway_port=gateway_port,
            requested_server_name=requested_server_name(getattr(conn, "tls", None)),
            peer_certificate=peer_certificate_der(getattr(conn, "tls", None))
            if any(getattr(e, "wants_peer_certificate", False) for e in self.engines)
            else b"",
        )

    def decide(self, request: AuthzRequest) -> Deferred[Decision]:
        """Ask every engine; deny-overrides; any engine failure or timeout is a deny.

        Engines that answer at once (intentions, a cached OPA decision) are combined
        without a Deferred per engine: the usual handshake pays for one ``succeed``.
        """
        answer = self.answer(request)
        return succeed(answer) if isinstance(answer, Decision) else answer

    def answer(self, request: AuthzRequest) -> Decision | Deferred[Decision]:
        """:meth:`decide`'s decision itself when every engine answered at once (no
        Deferred at all: an L7 destination asks per request), else a Deferred."""
        answers: list[Decision | Deferred[Decision]] = []
        waiting = False
        for engine in self.engines:
            try:
                answer = engine_answer(engine, request)  # checks the answer's type
            except Exception:
                failed = self._engine_failed(Failure(), engine)
                answers.append(
                    failed if isinstance(failed, Decision) else failure(engine.name, "cancelled")
                )
                continue
            if isinstance(answer, Deferred):
                if not answer.called:
                    answer.addTimeout(self.config.authz_timeout, self.reactor)
                answer.addErrback(self._engine_failed, engine)
                waiting = True
            answers.append(answer)
        destination = request.destination
        if not waiting:
            return self._combined(answers, destination)  # type: ignore[arg-type]
        pending = [a if isinstance(a, Deferred) else succeed(a) for a in answers]
        return DeferredList(pending, consumeErrors=True).addCallback(
            lambda results: self._combined([r for _, r in results], destination)
        )

    def _combined(self, decisions: list[Decision], destination: Any) -> Decision:
        decision = combine(decisions, self.config.default_policy)
        self.children.decision(destination, decision.engine, decision.verdict.value).inc()
        return decision

    def _engine_failed(self, reason: Any, engine: AuthorizationEngine) -> Decision | Any:
        if reason.check(CancelledError):
            return reason  # the client left; nothing to decide, nothing to count
        if reason.check(DeferredTimeoutError):
            detail = f"timed out after {self.config.authz_timeout:g}s"
        else:
            detail = f"{type(reason.value).__name__}: {reason.value}"
        why = engine_error_reason(reason.value)
        self.metrics.authz_errors.labels(site=self.name, engine=engine.name, reason=why).inc()
        self.log.warn(
            "authorization engine {engine} failed ({why}), denied: {detail}",
            engine=engine.name,
            why=why,
            detail=detail,
        )
        self.log.failure("engine {engine}", reason, level=LogLevel.debug, engine=engine.name)
        return failure(engine.name, detail)
