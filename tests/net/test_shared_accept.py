"""A listening socket shared by workers: no connection waits on a worker that left.

Two gateway reactors stand for two workers: each adopts the same listening socket
(``gwcore.net.shared_accept.adopt``, as a worker does with the supervisor's), and a
thread per reactor blocks in that reactor's own epoll wait, as an idle worker's
reactor does between events. A real client then connects on 127.0.0.1.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.skipif(not available(), reason="Linux epoll only")

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


def test_a_worker_that_stops_listening_when_woken_leaves_the_connection_to_another(
    request: pytest.FixtureRequest,
) -> None:
    """Two idle workers on one shared socket; a connection arrives and the worker that
    was woken stops listening without accepting (a drain on stop or reload). The
    other worker still sees the connection waiting and accepts it: nothing is left
    in the queue for a client to wait on. (With ``EPOLLEXCLUSIVE`` the kernel woke
    only one worker and the other never heard of the connection.)"""
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
    leaving = 0 if woken[0] else 1
    assert woken[leaving], "no worker was woken for the connection"
    ports[leaving].stopListening()  # woken, but draining: it accepts nothing more
    staying = 1 - leaving
    events = woken[staying] or reactors[staying]._poller.poll(QUIET)
    assert [fd for fd, _ in events] == [ports[staying].fileno()], woken
    ports[staying].doRead()
    assert ports[staying].sessionno == 1
    assert ports[leaving].sessionno == 0
