"""The gateway's reactor: Twisted's epoll reactor without the per-event log context.

Twisted's epoll reactor dispatches every ready descriptor through
``log.callWithLogger``: it asks the selectable for its ``logPrefix()``, copies
the current log-context dict, pushes it on a thread-local stack, runs the
handler and pops it again. The context only feeds the ``system`` field of
*legacy* ``twisted.python.log`` events emitted inside the handler; the gateway
logs through ``twisted.logger`` with its own fields (site, SNI, peer), so it
pays that cost on every read and write for nothing. On a keep-alive relay it is
about an eighth of the process's CPU per request (two dispatches per request).

:class:`GatewayReactor` is a subclass of :class:`EPollReactor` that overrides only
``doPoll``: it polls exactly as the parent does and hands each event to the
parent's own ``_doReadOrWrite`` (reads, writes, hang-ups, exceptions logged and
the selectable disconnected — unchanged), just not through ``callWithLogger``.
Legacy ``log.msg``/``log.err`` calls made while handling an event therefore log
with system ``-`` instead of the selectable's prefix; nothing else differs.

It is installed through Twisted's own reactor selection (:func:`install`), never
by patching Twisted: ``twistd -n tgw`` installs it when no ``--reactor`` was
given (see :func:`install_if_unset`), and a ``--reactor`` given to twistd wins.
Where epoll is missing (not Linux) the default reactor is used.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.main import installReactor

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll: not Linux
    EPollReactor = None  # type: ignore[assignment,misc]

REACTOR_MODULE = "twisted.internet.reactor"


def available() -> bool:
    """Whether this platform has epoll and Twisted the epoll reactor we extend
    (with the attributes :class:`GatewayReactor` relies on; a Twisted that renamed
    them gets its own reactor rather than a half-working subclass)."""
    return EPollReactor is not None and all(
        hasattr(EPollReactor, name) for name in ("doPoll", "_doReadOrWrite")
    )


if EPollReactor is not None:

    class GatewayReactor(EPollReactor):  # type: ignore[misc,valid-type]
        """:class:`EPollReactor` dispatching events without a log context (module doc)."""

        def doPoll(self, timeout: float | None) -> None:
            if timeout is None:
                timeout = -1  # wait until something is ready
            # EINTR is retried by Python itself (PEP 475); any other error is a bug
            # and propagates, as it does from the parent.
            events = self._poller.poll(timeout, len(self._selectables))
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:  # removed by an earlier event of this batch
                    dispatch(selectable, fd, event)

        doIteration = doPoll


def install() -> Any:
    """Install a :class:`GatewayReactor` as ``twisted.internet.reactor`` and return it.

    Raises ``twisted.internet.error.ReactorAlreadyInstalledError`` if a reactor is
    already installed, like every Twisted ``install()``.
    """
    reactor = GatewayReactor()
    installReactor(reactor)
    return reactor


def install_if_unset() -> str:
    """Install the gateway reactor unless a reactor is already chosen.

    Returns what happened, for the start-up log: ``"tgw"`` (installed),
    ``"kept"`` (a reactor was already installed, e.g. by ``twistd --reactor``) or
    ``"unavailable"`` (no epoll here; Twisted's default is installed on first use).
    """
    if REACTOR_MODULE in sys.modules:
        return "kept"
    if not available():
        return "unavailable"
    install()
    return "tgw"


def is_gateway_reactor(reactor: Any) -> bool:
    """Whether ``reactor`` is a :class:`GatewayReactor` (the workers run what the
    supervisor runs)."""
    return EPollReactor is not None and isinstance(reactor, GatewayReactor)
