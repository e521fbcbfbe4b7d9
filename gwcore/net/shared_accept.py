"""Accepting from a listening socket that several worker processes share.

Twisted's TCP port accepts, per wake-up, as many pending connections as its last
batch allowed: 100 at first, 20 more each time it found as many as it asked for,
else as many as it found. That suits a socket one process owns. With ``workers = N``
on one shared socket (:mod:`gwcore.runtime.workers`) every worker is woken for a
new connection and the first to run takes everything pending: the 32 connections a
load generator opens at once land mostly in one worker, which then does all their
handshakes while the other waits.

A :class:`SharedPort` accepts :data:`ACCEPTS_PER_WAKEUP` connection per wake-up
and leaves the rest in the queue: the worker returns to its other events, and the
next connection goes to whichever worker polls first, the less busy one.
(``worker_listeners = "reuseport"`` gives each worker its own queue instead; the
kernel spreads connections over them by a hash of the addresses.)

On the gateway's epoll reactor a :class:`SharedPort` waits for connections with
``EPOLLEXCLUSIVE``: a new connection wakes one idle worker, not every worker. Without
it each connection woke all N; N - 1 of them ran a reactor turn, Twisted's ``doRead``
and an ``accept`` that found nothing (``EAGAIN``): per handshake, a wake-up's worth
of CPU that one process does not pay. A busy worker is not woken but sees the queue
at its next poll, as before (level-triggered), so the queue is still served by
whichever worker polls first.
"""

from __future__ import annotations

import select
from typing import Any

from twisted.internet.protocol import Factory

from gwcore.net.fasttcp import Port
from gwcore.net.fasttcp import adopt as fasttcp_adopt
from gwcore.net.reactor import is_gateway_reactor

ACCEPTS_PER_WAKEUP = 1


class SharedPort(Port):
    """A :class:`~gwcore.net.fasttcp.Port` that accepts one connection per wake-up."""

    @property
    def numberAccepts(self) -> int:
        """How many ``accept`` calls Twisted's ``doRead`` makes per wake-up."""
        return ACCEPTS_PER_WAKEUP

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        """Twisted's batch scaling (module docstring) does not apply to a shared queue."""

    def startReading(self) -> None:
        """Wait for connections with ``EPOLLEXCLUSIVE`` where the reactor is the
        gateway's (module docstring); elsewhere as Twisted does."""
        if exclusive_wakeups(self.reactor):
            reactor = self.reactor
            # The reactor's own bookkeeping (_reads, _selectables), with one more flag;
            # a listening port never waits for writing, so this is always a fresh add
            # (epoll refuses to modify an exclusive registration).
            try:
                reactor._add(
                    self,
                    reactor._reads,
                    reactor._writes,
                    reactor._selectables,
                    select.EPOLLIN | select.EPOLLEXCLUSIVE,
                    select.EPOLLOUT,
                )
                return
            except OSError:  # a kernel before 4.5 refuses the flag (EINVAL)
                pass
        super().startReading()


def exclusive_wakeups(reactor: Any) -> bool:
    """Whether ``reactor`` can wait on a shared listening socket with ``EPOLLEXCLUSIVE``
    (Linux 4.5+, the gateway's epoll reactor, the private method it is added with)."""
    return (
        hasattr(select, "EPOLLEXCLUSIVE")
        and is_gateway_reactor(reactor)
        and hasattr(reactor, "_add")
    )


def adopt(reactor: Any, fd: int, family: int, factory: Factory) -> Any:
    """Listen on an inherited listening socket that other workers share."""
    return fasttcp_adopt(reactor, fd, family, factory, SharedPort)
