"""gwcore.net.reactor: the main loop that skips timer work when there is none.

Each test runs a fresh :class:`GatewayReactor` for real (``run()``, never installed,
no signal handlers) in this process, with real descriptors (socket pairs), real
threads for ``callFromThread`` and Twisted's own clock. Many of the semantics
checked would leave a wrong loop asleep in ``epoll_wait`` forever (nothing due, so
nothing to wake it): a watchdog thread pokes a socket the loop watches after a few
seconds, its handler crashes the reactor, and the test fails on the watchdog having
fired instead of hanging.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.logger import globalLogPublisher

from gwcore.net.reactor import GatewayReactor

WATCHDOG_SECONDS = 5.0


class Reader(FileDescriptor):
    """One end of a socket pair; each read calls ``on_read(data)``."""

    def __init__(self, reactor: Any, sock: socket.socket, on_read: Callable[[bytes], Any]) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.on_read(self.sock.recv(65536))

    def connectionLost(self, reason: Any) -> None:
        self.reactor.removeReader(self)


class Loop:
    """A fresh gateway reactor with socket pairs to poke it and a watchdog."""

    def __init__(self) -> None:
        self.reactor = GatewayReactor()
        self.socks: list[socket.socket] = []
        self.watchdog_fired = False
        self._watchdog = self.pipe(self._on_watchdog)

    def pipe(self, on_read: Callable[[bytes], Any]) -> socket.socket:
        """A socket whose bytes reach ``on_read`` inside the loop; returns the sending end."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.socks += [ours, theirs]
        self.reactor.addReader(Reader(self.reactor, ours, on_read))
        return theirs

    def _on_watchdog(self, data: bytes) -> None:
        self.watchdog_fired = True
        self.reactor.crash()

    def run(self, start: Callable[[], Any]) -> None:
        """``start()`` once running, then run until stopped or crashed (or the watchdog)."""
        self.reactor.callWhenRunning(start)
        timer = threading.Timer(WATCHDOG_SECONDS, self._watchdog.send, (b"!",))
        timer.start()
        try:
            self.reactor.run(installSignalHandlers=False)
        finally:
            timer.cancel()
        assert not self.watchdog_fired, "the loop slept through work it had to do"

    def close(self) -> None:
        reactor = self.reactor
        reactor.removeAll()
        with contextlib.suppress(Exception):
            reactor.waker.connectionLost(None)
        with contextlib.suppress(Exception):
            reactor._poller.close()
        if reactor.threadpool is not None:
            reactor.threadpool.stop()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    made.close()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class RecordingPoller:
    """The reactor's epoll object, with every poll's timeout appended to ``timeouts``."""

    def __init__(self, real: Any, timeouts: list[Any]) -> None:
        self._real = real
        self._timeouts = timeouts

    def poll(self, timeout: float, maxevents: int) -> Any:
        self._timeouts.append(timeout)
        return self._real.poll(timeout, maxevents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_call_from_thread_runs_in_the_loop_and_wakes_its_poll(loop: Loop) -> None:
    """``callFromThread`` from another thread, while the loop sleeps with no timer
    pending, runs the call in the reactor thread (the waker ends the poll)."""
    ran_in: list[threading.Thread] = []

    def from_thread() -> None:
        ran_in.append(threading.current_thread())
        loop.reactor.stop()

    def start() -> None:
        threading.Thread(target=loop.reactor.callFromThread, args=(from_thread,)).start()

    loop.run(start)
    assert ran_in == [threading.main_thread()]


def test_call_later_made_by_an_event_handler_runs_without_waiting(loop: Loop) -> None:
    """A ``callLater(0)`` made inside an I/O handler (a new timed call, no timer pending
    before) runs on the next iteration: the loop must not sleep with nothing due."""
    order: list[str] = []

    def on_read(data: bytes) -> None:
        order.append("read")
        loop.reactor.callLater(0, lambda: (order.append("later"), loop.reactor.stop()))

    poke = loop.pipe(on_read)
    loop.run(lambda: poke.send(b"x"))
    assert order == ["read", "later"]


def test_timed_calls_run_in_time_order_including_ones_added_by_timed_calls(loop: Loop) -> None:
    """Calls due at different times run in time order, each once, and a call that a
    timed call adds (sooner than others already pending) runs in its place."""
    order: list[str] = []
    reactor = loop.reactor

    def first() -> None:
        order.append("first")
        reactor.callLater(0.01, order.append, "added")

    def start() -> None:
        reactor.callLater(0.05, lambda: (order.append("last"), reactor.stop()))
        reactor.callLater(0.03, order.append, "third")
        reactor.callLater(0, first)

    loop.run(start)
    assert order == ["first", "added", "third", "last"]


def test_a_call_reset_sooner_by_an_event_handler_runs_at_its_new_time(loop: Loop) -> None:
    """``DelayedCall.reset`` to an earlier time from an I/O handler (the heap is
    reordered in place; nothing new was added) makes the loop wake for it."""
    reactor = loop.reactor
    ran: list[str] = []
    far: list[Any] = []

    def on_read(data: bytes) -> None:
        far[0].reset(0.01)

    def start() -> None:
        far.append(reactor.callLater(3600, lambda: (ran.append("far"), reactor.stop())))
        poke.send(b"x")

    poke = loop.pipe(on_read)
    loop.run(start)
    assert ran == ["far"]


def test_a_delayed_call_runs_at_its_later_time_not_its_first(loop: Loop) -> None:
    """``DelayedCall.delay`` pushes a call back: it does not run at its first time."""
    reactor = loop.reactor
    ran: list[float] = []
    began: list[float] = []

    def start() -> None:
        began.append(reactor.seconds())
        call = reactor.callLater(0.01, lambda: (ran.append(reactor.seconds()), reactor.stop()))
        call.delay(0.1)

    loop.run(start)
    assert len(ran) == 1 and ran[0] - began[0] >= 0.1


def test_cancelled_calls_do_not_run_and_a_cancelled_heap_is_compacted(loop: Loop) -> None:
    """Cancelled calls never run; when an I/O handler cancels most pending calls (no
    call due, nothing added) the next iteration still compacts the heap, as Twisted's
    ``runUntilCurrent`` does, so cancelled timers do not accumulate."""
    reactor = loop.reactor
    calls: list[Any] = []
    seen: list[int] = []
    ran: list[int] = []

    def cancel_most(data: bytes) -> None:
        for call in calls[:150]:
            call.cancel()
        check.send(b"x")  # read on a later iteration

    def after(data: bytes) -> None:
        seen.append(len(reactor._pendingTimedCalls))
        reactor.stop()

    check = loop.pipe(after)
    poke = loop.pipe(cancel_most)

    def start() -> None:
        calls.extend(reactor.callLater(3600 + i, ran.append, i) for i in range(200))
        reactor.callLater(0, poke.send, b"x")  # once the 200 are in the heap

    loop.run(start)
    assert ran == []
    assert seen == [50]


def test_stop_from_an_event_handler_fires_shutdown_and_ends_run(loop: Loop) -> None:
    """``reactor.stop()`` in an I/O handler with no timer pending: the next iteration
    fires the shutdown event (before, during, after triggers) and ``run()`` returns."""
    reactor = loop.reactor
    phases: list[str] = []
    for phase in ("before", "during", "after"):
        reactor.addSystemEventTrigger(phase, "shutdown", phases.append, phase)
    poke = loop.pipe(lambda data: reactor.stop())
    loop.run(lambda: poke.send(b"x"))
    assert phases == ["before", "during", "after"]
    assert not reactor.running


def test_crash_ends_run_without_the_shutdown_event(loop: Loop) -> None:
    """``reactor.crash()`` in an I/O handler ends ``run()`` at once; no shutdown trigger
    fires (Twisted's contract for crash)."""
    reactor = loop.reactor
    phases: list[str] = []
    reactor.addSystemEventTrigger("before", "shutdown", phases.append, "before")
    poke = loop.pipe(lambda data: reactor.crash())
    loop.run(lambda: poke.send(b"x"))
    assert phases == []
    assert not reactor.running


def test_an_exception_in_a_timed_call_is_logged_and_the_loop_goes_on(
    loop: Loop, logged: list[dict[str, Any]]
) -> None:
    """A timed call that raises is logged with its failure; the next call still runs."""
    reactor = loop.reactor
    ran: list[str] = []

    def explode() -> None:
        raise RuntimeError("timed call bug")

    def start() -> None:
        reactor.callLater(0, explode)
        reactor.callLater(0.01, lambda: (ran.append("next"), reactor.stop()))

    loop.run(start)
    assert ran == ["next"]
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert any(f.check(RuntimeError) and "timed call bug" in str(f.value) for f in failures)


def test_an_exception_in_an_iteration_is_logged_as_critical_and_the_loop_goes_on(
    loop: Loop, logged: list[dict[str, Any]]
) -> None:
    """An error out of an iteration itself (here the poll) is logged as Twisted's loop
    logs it ("Unexpected error in main loop", critical) and the next iteration runs."""
    reactor = loop.reactor
    real_poll = reactor._poller.poll
    failed: list[bool] = []

    class FailOnce:
        def poll(self, timeout: float, maxevents: int) -> Any:
            if not failed:
                failed.append(True)
                raise OSError("poll broke")
            return real_poll(timeout, maxevents)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    real = reactor._poller
    ran: list[str] = []

    def start() -> None:
        reactor._poller = FailOnce()
        reactor.callLater(0, lambda: (ran.append("after"), reactor.stop()))

    try:
        loop.run(start)
    finally:
        reactor._poller = real
    assert failed == [True] and ran == ["after"]
    critical = [e for e in logged if e.get("log_format") == "Unexpected error in main loop"]
    assert len(critical) == 1 and critical[0]["log_failure"].check(OSError)
    assert critical[0]["log_level"].name == "critical"


def test_an_iteration_with_no_timer_work_skips_run_until_current_and_timeout(
    loop: Loop,
) -> None:
    """The point of the override: I/O-only iterations (no thread call, no new or due
    timed call, one timer far ahead) call neither ``runUntilCurrent`` nor
    ``timeout`` — and the timer's own wake-up time is still the poll's timeout."""
    reactor = loop.reactor
    counts = {"runUntilCurrent": 0, "timeout": 0}
    for name in counts:
        real = getattr(reactor, name)

        def counting(real: Any = real, name: str = name) -> Any:
            counts[name] += 1
            return real()

        setattr(reactor, name, counting)
    rounds: list[int] = []
    timeouts: list[Any] = []

    def on_read(data: bytes) -> None:
        rounds.append(len(rounds))
        if len(rounds) == 20:
            counts_at_20.update(counts)
            reactor.stop()
        else:
            poke.send(b"x")  # served on the next iteration

    real_poller = reactor._poller
    counts_at_20: dict[str, int] = {}
    poke = loop.pipe(on_read)

    def start() -> None:
        reactor.callLater(3600, lambda: None)
        reactor._poller = RecordingPoller(real_poller, timeouts)
        poke.send(b"x")

    try:
        loop.run(start)
    finally:
        reactor._poller = real_poller
    assert len(rounds) == 20
    # The first iteration inserts the new timer (both called once); the 19 after it
    # have nothing to do but poll.
    assert counts_at_20 == {"runUntilCurrent": 1, "timeout": 1}
    # Every poll slept at most until the timer (an hour), none forever (-1) or not at all.
    assert all(3500 < t <= 3600 for t in timeouts[:20])


def test_a_sleep_is_capped_at_what_epoll_can_take(loop: Loop) -> None:
    """With only a timer months ahead, every poll (the loop's own computation as well as
    Twisted's ``timeout()`` on the first iteration) waits at most 2147483 s, the
    longest epoll's millisecond ``int`` holds, as Twisted caps it."""
    reactor = loop.reactor
    timeouts: list[Any] = []
    real_poller = reactor._poller
    reads: list[bytes] = []

    def on_read(data: bytes) -> None:
        reads.append(data)
        if len(reads) == 3:
            reactor.stop()
        else:
            poke.send(b"x")

    poke = loop.pipe(on_read)

    def start() -> None:
        reactor.callLater(10**7, lambda: None)
        reactor._poller = RecordingPoller(real_poller, timeouts)
        poke.send(b"x")

    try:
        loop.run(start)
    finally:
        reactor._poller = real_poller
    assert len(reads) == 3
    assert timeouts[:3] == [2147483] * 3
