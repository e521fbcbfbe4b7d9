"""gwcore.net.reactor: Twisted's epoll dispatch, minus the per-event log context.

The reactor instances here are created but never installed or run: each test
registers real descriptors (socket pairs) and calls ``doPoll`` itself, so the
dispatch is exercised on real epoll events without touching the reactor that
pytest-twisted runs. Installation is checked in a fresh interpreter.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, failure, log

from gwcore.net import reactor as gateway_reactor
from gwcore.net.reactor import GatewayReactor


class Reader(FileDescriptor):
    """One end of a socket pair, recording what the reactor asked of it."""

    def __init__(self, reactor: Any, sock: socket.socket, on_read: Any = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.reads: list[bytes] = []
        self.systems: list[Any] = []
        self.lost: list[failure.Failure] = []
        self.on_read = on_read

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader-prefix"

    def doRead(self) -> None:
        self.systems.append((context.get(log.ILogContext) or {}).get("system"))
        self.reads.append(self.sock.recv(65536))
        if self.on_read is not None:
            self.on_read()

    def connectionLost(self, reason: failure.Failure) -> None:
        self.lost.append(reason)
        self.reactor.removeReader(self)


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    pairs.append((a, b))
    return a, b


@pytest.fixture
def fresh() -> Iterator[Any]:
    """``fresh(cls)``: a new, never installed reactor of ``cls``, closed at teardown."""
    made: list[Any] = []

    def make(cls: type) -> Any:
        made.append(cls())
        return made[-1]

    yield make
    for reactor in made:
        # Never run, so never stopped: close its waker pipe and epoll descriptor.
        reactor.removeAll()
        reactor.waker.connectionLost(None)
        reactor._poller.close()


def test_events_are_dispatched_without_the_log_context_twisted_pushes(
    pairs: Any, fresh: Any
) -> None:
    """The point of the subclass: a read handler runs in the default log context
    (system ``-``), where Twisted's epoll reactor pushes the selectable's logPrefix
    for each event."""
    for cls, expected in ((GatewayReactor, "-"), (EPollReactor, "Reader-prefix")):
        reactor = fresh(cls)
        ours, theirs = pair(pairs)
        reader = Reader(reactor, ours)
        reactor.addReader(reader)
        theirs.sendall(b"ping")
        reactor.doPoll(1.0)
        assert reader.reads == [b"ping"], cls
        assert reader.systems == [expected], cls


def test_every_ready_descriptor_of_one_poll_is_served_in_one_call(pairs: Any, fresh: Any) -> None:
    """Several ready descriptors are all handled by one ``doPoll``, each with its bytes."""
    reactor = fresh(GatewayReactor)
    readers = []
    for i in range(5):
        ours, theirs = pair(pairs)
        reader = Reader(reactor, ours)
        reactor.addReader(reader)
        theirs.sendall(b"n%d" % i)
        readers.append(reader)
    reactor.doPoll(1.0)
    assert [r.reads for r in readers] == [[b"n%d" % i] for i in range(5)]


def test_a_descriptor_removed_by_an_earlier_event_of_the_batch_is_skipped(
    pairs: Any, fresh: Any
) -> None:
    """When one handler unregisters another descriptor that is ready in the same
    batch (a splice closing its other side), the removed one is not dispatched."""
    reactor = fresh(GatewayReactor)
    a_ours, a_theirs = pair(pairs)
    b_ours, b_theirs = pair(pairs)
    second = Reader(reactor, b_ours)
    first = Reader(reactor, a_ours)

    def drop_other() -> None:
        reactor.removeReader(second if first.reads and not second.reads else first)

    first.on_read = drop_other
    second.on_read = drop_other
    reactor.addReader(first)
    reactor.addReader(second)
    a_theirs.sendall(b"a")
    b_theirs.sendall(b"b")
    reactor.doPoll(1.0)
    # Whichever ran first removed the other; exactly one read happened.
    assert len(first.reads) + len(second.reads) == 1


def test_a_handler_that_raises_is_disconnected_and_logged_like_twisted_does(
    pairs: Any, fresh: Any
) -> None:
    """Exceptions keep Twisted's handling: logged, the selectable disconnected with the
    error as reason, and other descriptors of the batch still served."""
    reactor = fresh(GatewayReactor)
    bad_ours, bad_theirs = pair(pairs)
    good_ours, good_theirs = pair(pairs)

    def explode() -> None:
        raise RuntimeError("handler bug")

    bad = Reader(reactor, bad_ours, on_read=explode)
    good = Reader(reactor, good_ours)
    reactor.addReader(bad)
    reactor.addReader(good)
    bad_theirs.sendall(b"x")
    good_theirs.sendall(b"y")
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        reactor.doPoll(1.0)
    finally:
        log.removeObserver(logged.append)
    assert good.reads == [b"y"]
    assert len(bad.lost) == 1 and bad.lost[0].check(RuntimeError)
    assert any(e.get("isError") and "handler bug" in str(e.get("failure")) for e in logged)
    assert bad not in reactor.getReaders()


def test_a_hang_up_reaches_the_handler_as_connection_lost(pairs: Any, fresh: Any) -> None:
    """A peer that closes is reported the way Twisted reports it (read of b'' here;
    the reactor's own hang-up handling for descriptors that are not read)."""
    reactor = fresh(GatewayReactor)
    ours, theirs = pair(pairs)
    reader = Reader(reactor, ours)
    reactor.addReader(reader)
    theirs.close()
    reactor.doPoll(1.0)
    assert reader.reads == [b""]


class GoneReader(Reader):
    """A reader whose descriptor the application already gave up (``fileno() == -1``)."""

    def fileno(self) -> int:
        return -1 if self.gone else self.sock.fileno()

    gone = False


def test_a_selectable_whose_fileno_is_gone_is_disconnected_as_twisted_does(
    pairs: Any, fresh: Any
) -> None:
    """A readable selectable answering ``fileno() == -1`` is not read: it is disconnected
    with ``ConnectionFdescWentAway``, exactly as by Twisted's epoll reactor."""
    for cls in (GatewayReactor, EPollReactor):
        reactor = fresh(cls)
        ours, theirs = pair(pairs)
        reader = GoneReader(reactor, ours)
        reactor.addReader(reader)
        reader.gone = True
        theirs.sendall(b"x")
        reactor.doPoll(1.0)
        assert reader.reads == [], cls
        assert len(reader.lost) == 1 and reader.lost[0].check(error.ConnectionFdescWentAway), cls


class ReadWriter(Reader):
    """Records writes too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def doWrite(self) -> None:
        self.writes += 1
        self.reactor.removeWriter(self)


def test_only_a_read_only_event_skips_twisteds_dispatch_and_both_are_served(
    pairs: Any, fresh: Any
) -> None:
    """A readable-only event is read without ``_doReadOrWrite`` (the call saved per
    event); a readable-and-writable one goes through it and gets both handlers."""
    reactor = fresh(GatewayReactor)
    through_twisted: list[int] = []
    parent = reactor._doReadOrWrite

    def counting(selectable: Any, fd: int, event: int) -> None:
        through_twisted.append(event)
        parent(selectable, fd, event)

    reactor._doReadOrWrite = counting
    ours, theirs = pair(pairs)
    reader = ReadWriter(reactor, ours)
    reactor.addReader(reader)
    theirs.sendall(b"one")
    reactor.doPoll(1.0)
    assert reader.reads == [b"one"] and through_twisted == []
    reactor.addWriter(reader)
    theirs.sendall(b"two")
    reactor.doPoll(1.0)
    assert reader.reads == [b"one", b"two"] and reader.writes == 1
    assert through_twisted == [select.EPOLLIN | select.EPOLLOUT]


class RecordingPoller:
    """Stands between the reactor and its epoll object, recording each poll's timeout."""

    def __init__(self, poller: Any) -> None:
        self.poller = poller
        self.timeouts: list[float] = []

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        return self.poller.poll(timeout, maxevents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


@pytest.mark.timeout(10)  # a mutant that blocks here fails in 10 s, not 60
def test_a_zero_timeout_poll_returns_at_once_when_nothing_is_ready(pairs: Any, fresh: Any) -> None:
    """``doPoll(0)`` (what the main loop passes when timers are due) asks epoll not to
    wait at all (timeout 0, not -1 "until something is ready") and dispatches nothing
    to an idle reader; ``doPoll(None)`` is the one that waits, and returns as soon as a
    descriptor is ready. (A hang is also caught by the suite's pytest-timeout.)"""
    reactor = fresh(GatewayReactor)
    recorder = reactor._poller = RecordingPoller(reactor._poller)
    ours, theirs = pair(pairs)
    reader = Reader(reactor, ours)
    reactor.addReader(reader)
    reactor.doPoll(0)
    assert recorder.timeouts == [0]
    assert reader.reads == []
    theirs.sendall(b"ready")
    reactor.doPoll(None)
    assert recorder.timeouts == [0, -1]
    assert reader.reads == [b"ready"]
    reactor._poller = recorder.poller  # the fixture closes the real one


INSTALL_SCRIPT = r"""
import sys
from gwcore.net import reactor as gr
assert "twisted.internet.reactor" not in sys.modules
first = gr.install_if_unset()
from twisted.internet import reactor
second = gr.install_if_unset()
print(first, second, type(reactor).__name__, gr.is_gateway_reactor(reactor))
"""

KEEP_SCRIPT = r"""
from twisted.internet import pollreactor
pollreactor.install()
from gwcore.net import reactor as gr
from twisted.internet import reactor
print(gr.install_if_unset(), type(reactor).__name__, gr.is_gateway_reactor(reactor))
"""


def run_python(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_install_if_unset_installs_once_in_a_fresh_process() -> None:
    """With no reactor chosen, the gateway reactor becomes ``twisted.internet.reactor``;
    asking again keeps it."""
    assert run_python(INSTALL_SCRIPT) == "tgw kept GatewayReactor True"


def test_install_if_unset_keeps_a_reactor_chosen_before_it() -> None:
    """A reactor installed first (as ``twistd --reactor poll`` does) is left in place."""
    assert run_python(KEEP_SCRIPT) == "kept PollReactor False"


def test_available_on_this_linux_machine() -> None:
    """The gateway reactor is available wherever epoll is (this suite runs on Linux)."""
    assert gateway_reactor.available()
