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

Every idle worker is woken for a new connection, and those that lose the race find
nothing to accept. Waiting with ``EPOLLEXCLUSIVE`` (one idle worker woken per
connection) was tried and taken out: the kernel then tells only the worker it woke,
and a worker that stops listening before it accepts (a drain on stop or reload, a
crash) leaves the connection in the queue, unseen by the others until the next
connection arrives — a hang on a quiet gateway (tests/net/test_shared_accept.py).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory

from gwcore.net.fasttcp import Port
from gwcore.net.fasttcp import adopt as fasttcp_adopt

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


def adopt(reactor: Any, fd: int, family: int, factory: Factory) -> Any:
    """Listen on an inherited listening socket that other workers share."""
    return fasttcp_adopt(reactor, fd, family, factory, SharedPort)
