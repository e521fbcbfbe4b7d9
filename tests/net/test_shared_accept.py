"""A listening socket shared by workers wakes one idle worker per connection.

Two gateway reactors stand for two workers: each adopts the same listening socket
(``gwcore.net.shared_accept.adopt``, as a worker does with the supervisor's), and a
thread per reactor blocks in that reactor's own epoll wait, as an idle worker's
reactor does between events. A real client then connects on 127.0.0.1.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gwcore.net import shared_accept
from gwcore.net.reactor import GatewayReactor, available

pytestmark = pytest.mark.skipif(
    not available() or not hasattr(select, "EPOLLEXCLUSIVE"), reason="Linux epoll only"
)

EPOLL_WAITS = {232, 281, 441}  # x86-64 epoll_wait, epoll_pwait, epoll_pwait2
QUIET = 0.3
"""Seconds a worker that was not woken waits before its poll returns empty."""


def in_epoll_wait(tid: int) -> bool:
    """Whether thread ``tid`` of this process is blocked in an epoll wait (its
    /proc syscall line: the number of the system call it sleeps in)."""
    try:
        number = Path(f"/proc/self/task/{tid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return number.isdigit() and int(number) in EPOLL_WAITS


def wait_idle(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + 5.0
    while not all(t.native_id and in_epoll_wait(t.native_id) for t in threads):
        assert time.monotonic() < deadline, "the workers' threads never waited in epoll"
        time.sleep(0.001)


def close_reactor(reactor: Any) -> None:
    """Every descriptor of a reactor that never ran: its sockets, waker and epoll."""
    for selectable in reactor.removeAll():
        selectable.connectionLost(Failure(ConnectionDone()))
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def test_a_connection_wakes_one_idle_worker_not_all(request: pytest.FixtureRequest) -> None:
    """With two idle workers on one shared socket, a new connection wakes exactly one
    of them (EPOLLEXCLUSIVE); before, it woke both, and the one that lost the race
    ran a reactor turn and an accept that found nothing, per connection.
    The woken worker then accepts the connection from the shared queue."""
    listener = socket.socket()
    request.addfinalizer(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    reactors: list[Any] = [GatewayReactor(), GatewayReactor()]
    ports = [
        shared_accept.adopt(r, listener.fileno(), listener.family, Factory.forProtocol(Protocol))
        for r in reactors
    ]
    for r in reactors:
        request.addfinalizer(lambda r=r: close_reactor(r))
    woken: list[list[tuple[int, int]]] = [[], []]

    def idle(index: int) -> None:
        woken[index] = reactors[index]._poller.poll(QUIET)

    threads = [threading.Thread(target=idle, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    wait_idle(threads)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    request.addfinalizer(client.close)
    for thread in threads:
        thread.join(5)
    got = [bool(events) for events in woken]
    assert sorted(got) == [False, True], woken
    # The woken worker's port takes the connection (one accept per wake-up).
    index = got.index(True)
    ports[index].doRead()
    assert ports[index].sessionno == 1
    assert ports[1 - index].sessionno == 0


def test_without_the_gateway_reactor_a_shared_port_reads_as_twisted_does() -> None:
    """A reactor that is not the gateway's gets Twisted's own registration: the
    exclusive wait is only used where its bookkeeping is the one it was written for."""
    from twisted.internet.selectreactor import SelectReactor

    assert shared_accept.exclusive_wakeups(GatewayReactor())
    assert not shared_accept.exclusive_wakeups(SelectReactor())


def test_a_kernel_that_refuses_the_flag_gets_a_plain_registration(
    request: pytest.FixtureRequest,
) -> None:
    """Where epoll refuses ``EPOLLEXCLUSIVE`` (EINVAL: Linux before 4.5) the shared
    port is registered as Twisted does and still takes connections."""
    import errno

    listener = socket.socket()
    request.addfinalizer(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    reactor: Any = GatewayReactor()
    request.addfinalizer(lambda: close_reactor(reactor))
    plain_add = reactor._add

    def old_kernel(xer: Any, primary: Any, other: Any, sel: Any, event: int, anti: int) -> None:
        if event & select.EPOLLEXCLUSIVE:
            raise OSError(errno.EINVAL, "Invalid argument")
        plain_add(xer, primary, other, sel, event, anti)

    reactor._add = old_kernel
    port = shared_accept.adopt(
        reactor, listener.fileno(), listener.family, Factory.forProtocol(Protocol)
    )
    assert port.fileno() in reactor._reads
    client = socket.create_connection(listener.getsockname(), timeout=5)
    request.addfinalizer(client.close)
    assert [fd for fd, _ in reactor._poller.poll(5)] == [port.fileno()]
    port.doRead()
    assert port.sessionno == 1
