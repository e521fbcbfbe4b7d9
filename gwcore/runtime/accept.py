"""Step 1 of a connection's life, *accept*: the site's listener and its admission.

The acceptor owns the listening port (bound here, or a socket a worker inherited,
:mod:`gwcore.runtime.worker_role`) and the set of live connections: over
``max_connections`` (or the process's connection or handshake limits,
:mod:`gwcore.policy.admission`) a new one is refused at once and counted by reason. At stop it
stops listening, lets the live connections drain, and closes what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.net import fasttcp, shared_accept
from gwcore.policy.admission import Admission
from gwcore.policy.config import SiteConfig

if TYPE_CHECKING:
    from gwcore.net.terminator import DownstreamProtocol


class Acceptor:
    """The accept step of one site; see the module docstring."""

    def __init__(
        self,
        config: SiteConfig,
        reactor: Any,
        metrics: GatewayMetrics,
        children: SiteChildren,
        factory: Callable[[], Any],
        admission: Admission | None = None,
    ) -> None:
        self.config = config
        self.name = config.key
        self.reactor = reactor
        self.metrics = metrics
        self.children = children
        self._factory = factory
        self.active: set[DownstreamProtocol] = set()
        self.admission = admission or Admission(0, 0)
        self._handshaking: set[Any] = set()  # admitted connections holding a handshake slot
        self.port: Any = None
        self.listening = False
        self.inherited_listener: tuple[int, int] | None = None
        """(fd, address family) of a listening socket a worker inherited."""
        self.shared_listener = False
        """Whether that socket's accept queue is shared with other workers."""

    async def listen(self) -> None:
        """Listen on the site's endpoint (at start, or again after a failed reload)."""
        # The data-path transports (gwcore.net.fasttcp) for tcp/tcp6 listeners.
        if self.inherited_listener is not None:
            # Adopting duplicates the descriptor: the worker keeps its own. On a queue
            # shared by workers, one connection per wake-up (gwcore.net.shared_accept).
            adopt = shared_accept.adopt if self.shared_listener else fasttcp.adopt
            self.port = adopt(self.reactor, *self.inherited_listener, self._factory())
        else:
            self.port = await fasttcp.listen(self.reactor, self.config.listen, self._factory())
        self.listening = True

    def address(self) -> tuple[str, int] | None:
        """The (host, port) the site listens on, once it does."""
        if self.port is None:
            return None
        host = self.port.getHost()
        return (host.host, host.port)

    def admit(self, conn: DownstreamProtocol) -> bool:
        """Count ``conn`` in, or refuse it when the site is full."""
        self.children.accepted.inc()
        refused = self.admission.admit(len(self.active), self.config.max_connections)
        if refused is not None:
            self.metrics.rejected.labels(site=self.name, reason=refused).inc()
            return False
        self.active.add(conn)
        self._handshaking.add(conn)
        self.children.active.inc()
        return True

    def handshake_finished(self, conn: Any) -> None:
        """``conn``'s handshake is over: free its slot in the process's handshake limit."""
        if conn in self._handshaking:
            self._handshaking.discard(conn)
            self.admission.handshake_finished()

    def release(self, conn: DownstreamProtocol) -> None:
        if conn in self.active:
            self.active.discard(conn)
            self.children.active.dec()
            self.admission.closed(handshaking=conn in self._handshaking)
            self._handshaking.discard(conn)

    async def drain(self, drain: float) -> None:
        """Stop accepting, wait up to ``drain`` seconds, close what is left (bounded wait)."""
        self.listening = False
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        deadline = self.reactor.seconds() + drain
        poll = 0.05 if drain < 60 else 1.0
        while self.active and self.reactor.seconds() < deadline:
            await sleep(self.reactor, poll)
        for conn in list(self.active):
            conn.close("shutdown")
        # Closing flushes and then completes asynchronously; wait (bounded) for the
        # access-log records before the caller closes the log.
        deadline = self.reactor.seconds() + 2.0
        while self.active and self.reactor.seconds() < deadline:
            await sleep(self.reactor, 0.01)


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
