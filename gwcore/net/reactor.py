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
with system ``-`` instead of the selectable's prefix; nothing else differs. An
event that is only "readable" (nearly all of a relay's) runs the read branch of
``_doReadOrWrite`` inline, one Python call less: ``fileno() == -1`` disconnects
with Twisted's "File descriptor lost", else ``doRead()``; an exception is logged
with ``log.err`` and disconnects the selectable (not as a read, as in Twisted).

It is installed through Twisted's own reactor selection (:func:`install`), never
by patching Twisted: ``twistd -n tgw`` installs it when no ``--reactor`` was
given (see :func:`install_if_unset`), and a ``--reactor`` given to twistd wins.
Where epoll is missing (not Linux) the default reactor is used.

It also overrides ``mainLoop`` so that an iteration with no timer work costs one
clock read and no Python call before the poll (see :meth:`GatewayReactor.mainLoop`).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import error
from twisted.internet.main import installReactor
from twisted.logger import Logger, LogLevel
from twisted.python import log

try:
    from select import EPOLLIN

    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll: not Linux
    EPollReactor = None  # type: ignore[assignment,misc]
    EPOLLIN = 0

REACTOR_MODULE = "twisted.internet.reactor"

# epoll_wait takes its timeout as a C int of milliseconds: ReactorBase.timeout()
# caps a sleep at this many seconds, and so does the loop below.
_LONGEST_SLEEP = 2147483

# ReactorBase.runUntilCurrent compacts the timer heap once more than this many (and
# more than half of it) are cancelled calls.
_CANCELLED_BEFORE_COMPACTION = 50

_log = Logger()

# What Twisted's _doReadOrWrite disconnects a selectable with when its fileno() is -1.
_NO_FILEDESC = error.ConnectionFdescWentAway("File descriptor lost")


def available() -> bool:
    """Whether this platform has epoll and Twisted the epoll reactor we extend
    (with the attributes :class:`GatewayReactor` relies on; a Twisted that renamed
    them gets its own reactor rather than a half-working subclass)."""
    return EPollReactor is not None and all(
        hasattr(EPollReactor, name)
        for name in ("doPoll", "_doReadOrWrite", "_disconnectSelectable", "runUntilCurrent")
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
                if selectable is None:  # removed by an earlier event of this batch
                    continue
                if event != EPOLLIN:  # hang-up, error, writable: Twisted's own code
                    dispatch(selectable, fd, event)
                    continue
                # Readable and nothing else (nearly every event of a relay): the read
                # branch of Twisted's _doReadOrWrite, here rather than one call deeper.
                # As there, only a doRead that returned counts as "in read" for the
                # disconnect (a raise or a lost descriptor is not).
                in_read = False
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        why = selectable.doRead()
                        in_read = True
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()  # as _doReadOrWrite logs it; the selectable is disconnected
                if why:
                    self._disconnectSelectable(selectable, why, in_read)

        doIteration = doPoll

        def mainLoop(self) -> None:
            """Twisted's ``ReactorBase.mainLoop``, skipping the timer work when there is none.

            Each of Twisted's iterations calls ``runUntilCurrent()`` (thread calls, new
            timed calls into the heap, a clock read, due calls, heap compaction, the
            shutdown event after ``stop()``) and then ``timeout()`` (new timed calls
            again, a second clock read) before polling: five Python calls and two clock
            reads, on a relay at every one of its two or three iterations per request.
            This loop reads the clock once and calls both only when one of the things
            they act on is there, each checked on the state they read:

            - ``threadCallQueue`` not empty: ``callFromThread`` appends to it and then
              wakes the poll (the waker), so a call queued after this check ends the
              poll at once and is seen on the next iteration, as with Twisted's loop;
            - ``_newTimedCalls`` not empty: ``callLater`` made since the last iteration
              (from an event handler, a thread call or a timed call);
            - ``_justStopped``: ``stop()`` was called, the shutdown event must fire;
            - the earliest pending call is due (``time <= now``, the very test
              ``runUntilCurrent`` uses; a call ``reset()`` sooner is moved up the heap
              in place, one ``delay()``-ed later is re-queued by ``runUntilCurrent``
              when its old time comes, as in Twisted);
            - enough cancelled calls for ``runUntilCurrent`` to compact the heap (its
              own condition), so a heap of cancelled timers stays bounded.

            When none holds, ``runUntilCurrent`` would do nothing and ``timeout()``
            would return the earliest call's time minus now (positive here, capped as
            Twisted caps it) or ``None`` with no call pending: computed here from the
            same clock read. ``crash()`` clears ``_started`` and ends the loop as in
            Twisted; ``self.running and timeout`` is Twisted's expression (a crashed or
            not yet running reactor polls without waiting). Any exception from an
            iteration is logged as critical ("Unexpected error in main loop") and the
            loop goes on, as Twisted's ``_topHandler`` does; a ``try`` costs nothing
            when nothing is raised, where a ``with`` costs two calls per iteration.
            """
            seconds = self.seconds
            while self._started:
                try:
                    pending = self._pendingTimedCalls
                    now = seconds()
                    if (
                        self.threadCallQueue
                        or self._newTimedCalls
                        or self._justStopped
                        or (pending and pending[0].time <= now)
                        or (
                            self._cancellations > _CANCELLED_BEFORE_COMPACTION
                            and self._cancellations > len(pending) >> 1
                        )
                    ):
                        self.runUntilCurrent()
                        timeout = self.timeout()
                    elif pending:
                        timeout = pending[0].time - now  # > 0: not due
                        if timeout > _LONGEST_SLEEP:
                            timeout = _LONGEST_SLEEP
                    else:
                        timeout = None
                    self.doIteration(self.running and timeout)
                except BaseException:
                    _log.failure("Unexpected error in main loop", level=LogLevel.critical)
            _log.info("Main loop terminated.")


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
