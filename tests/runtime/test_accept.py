"""gwcore.runtime.accept: the accept step on its own: admission up to ``max_connections``
(the next one refused and counted as overflow), release, a real loopback listener on an
ephemeral port, and draining that closes what is left when the drain time is up."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from gwcore.contract.metrics import GatewayMetrics, SiteChildren
from gwcore.runtime.accept import Acceptor
from gwcore.runtime.worker_role import WorkerRole, bind_listener
from gwcore.testing import site_config


@dataclass(eq=False)
class Conn:
    closed: list[str] = field(default_factory=list)

    def close(self, cause: str) -> None:
        self.closed.append(cause)


def acceptor(tmp_path: Path, clock: object, **site: object) -> Acceptor:
    metrics = GatewayMetrics()
    return Acceptor(
        site_config(tmp_path, **site),
        clock,
        metrics,
        SiteChildren(metrics, "main"),
        protocol.ServerFactory,
    )


def test_admission_stops_at_max_connections_and_release_makes_room(tmp_path: Path) -> None:
    """Two admitted, the third refused and counted as overflow; one released, one more in."""
    step = acceptor(tmp_path, MemoryReactorClock(), max_connections=2)
    first, second, third = Conn(), Conn(), Conn()
    assert step.admit(first) and step.admit(second)
    assert not step.admit(third)
    refused = step.metrics.registry.get_sample_value(
        "tgw_downstream_rejected_total", {"site": "main", "reason": "overflow"}
    )
    assert refused == 1.0
    step.release(first)
    step.release(first)  # twice is once
    assert step.admit(third)
    assert step.active == {second, third}


@pytest_twisted.ensureDeferred
async def test_listen_on_loopback_then_drain_closes_what_is_left(tmp_path: Path) -> None:
    """The acceptor listens on an ephemeral loopback port; draining stops listening and,
    the drain time up, closes the connections still open with cause ``shutdown``."""
    step = acceptor(tmp_path, reactor)
    await step.listen()
    host, port = step.address() or ("", 0)
    assert host == "127.0.0.1" and port > 0 and step.listening
    stuck = Conn()
    step.admit(stuck)
    drained: Deferred[None] = Deferred.fromCoroutine(step.drain(0.05))
    reactor.callLater(0.2, step.release, stuck)  # closing completes later, as a real one does
    await drained
    assert not step.listening
    assert stuck.closed == ["shutdown"]


def _queued(port: int, count: int) -> list[socket.socket]:
    """``count`` connections to ``port`` the kernel has completed and queued for accept."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


class _Built(protocol.ServerFactory):
    """A factory that counts the connections accepted (plain protocols)."""

    protocol = protocol.Protocol

    def __init__(self) -> None:
        self.built: list[protocol.Protocol] = []

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        self.built.append(super().buildProtocol(addr))
        return self.built[-1]


@pytest.mark.parametrize(("shared", "per_wakeup"), [(True, [1, 1, 1, 1, 1, 1]), (False, [6])])
def test_a_queue_shared_by_workers_is_accepted_from_one_connection_per_wakeup(
    tmp_path: Path, shared: bool, per_wakeup: list[int]
) -> None:
    """An inherited socket whose queue other workers share: each wake-up of the port
    (Twisted's ``doRead``) accepts one of six queued connections, leaving the others to
    whichever worker polls next. An inherited socket of this worker alone (or the
    supervisor's single process) keeps Twisted's batches: all six at once."""
    listener = bind_listener("tcp:0:interface=127.0.0.1")
    factory = _Built()
    step = Acceptor(
        site_config(tmp_path),
        reactor,
        GatewayMetrics(),
        SiteChildren(GatewayMetrics(), "main"),
        lambda: factory,
    )
    step.inherited_listener = (listener.fileno(), listener.family)
    step.shared_listener = shared
    clients: list[socket.socket] = []
    try:
        Deferred.fromCoroutine(step.listen())  # synchronous for a real socket
        step.port.stopReading()  # wake-ups are made by hand below, not by the reactor
        clients = _queued(listener.getsockname()[1], 6)
        counts = []
        while len(factory.built) < 6 and len(counts) < 10:
            before = len(factory.built)
            step.port.doRead()
            counts.append(len(factory.built) - before)
        assert counts == per_wakeup
    finally:
        for client in clients:
            client.close()
        listener.close()
        for accepted in factory.built:
            accepted.transport.abortConnection()
        if step.port is not None:
            step.port.stopListening()


def test_a_worker_shares_only_the_sockets_it_inherited_with_other_workers(tmp_path: Path) -> None:
    """With two workers, a socket inherited from the supervisor is shared; one this worker
    bound itself (``SO_REUSEPORT``: ``worker_listeners = "reuseport"`` or a listen address
    added by a reload) is its own queue; with one worker nothing is shared."""
    inherited = bind_listener("tcp:0:interface=127.0.0.1")
    listen = f"tcp:{inherited.getsockname()[1]}:interface=127.0.0.1"
    two = WorkerRole(0, {listen: (inherited.fileno(), inherited.family)}, count=2)
    one = WorkerRole(0, {listen: (inherited.fileno(), inherited.family)}, count=1)
    own = WorkerRole(0, {}, reuseport={"tcp:0": "tcp:0:interface=127.0.0.1"}, count=2)
    try:
        assert two.shares(listen)
        assert not one.shares(listen)
        assert not own.shares("tcp:0")
    finally:
        inherited.close()
        for role in (two, one, own):
            for sock in role._bound:
                sock.close()
