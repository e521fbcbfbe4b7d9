"""``workers = N``: N processes serving the same listening sockets.

The twistd process becomes a supervisor (:class:`WorkerSupervisor`). It binds
every site's listening socket itself, once, and starts N workers that inherit
them (one accept queue per site shared by all workers: no connection is lost
when one worker stops listening, and ``tcp:0`` works). Each worker is a full
gateway: its own reactor, its own plugin stacks, its own
:class:`~gwcore.runtime.service.GatewayService`; it adopts the inherited socket instead of
binding (:attr:`gwcore.runtime.site.Site.inherited_listener`).

A worker imports exactly what the supervisor imported: it runs the supervisor's
interpreter with the supervisor's ``sys.path`` (:data:`WORKER_BOOT`), never
``python -m``, which would put the working directory first and, started from a
source checkout, import the tree's ``gwcore/`` (where ``plugins/`` is not
``gwcore.plugins``) instead of the installed package.

- Start: worker 0 first, the others once it is serving, so first-run state (the
  built-in CA's keys) is created by exactly one process. A worker that fails
  before serving fails the start (twistd exits 1).
- Metrics: workers write prometheus-client multiprocess files into one
  directory; worker 0 serves the admin endpoint (and the sample service), and
  its ``/metrics`` adds up every worker's values (gauges: live sum or max).
  ``/ready``, ``/routes``, ``/certs``, ``/config`` and ``/explain`` answer for every
  worker: each worker serves its own admin resource on a private unix socket in the
  supervisor's directory, and worker 0 asks them all (``gwcore.net.admin_workers``).
- Signals: SIGHUP is passed to every worker (each reloads the file); SIGTERM
  stops the supervisor, which passes it on and waits for every worker to drain
  and exit (bounded), then exits. A worker that dies is started again after
  :data:`RESTART_DELAY` seconds.
- Limits: listen addresses are bound at start; a reload that adds a site or
  changes a ``listen`` makes each worker bind it itself with ``SO_REUSEPORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from gwcore.contract.metrics_series import use_worker_values
from gwcore.net.reactor import is_gateway_reactor
from gwcore.net.systemd import notify, reloading_lines
from gwcore.runtime.worker_role import WorkerRole, bind_listener

log = Logger(namespace="tgw.workers")

RESTART_DELAY = 1.0
STOP_GRACE = 10.0
"""Seconds past the longest drain_timeout before a worker that has not exited is killed."""
READY_FD = 3
WORKER_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from gwcore.runtime.workers import worker_main; raise SystemExit(worker_main(sys.argv[2:]))"
)
"""``python -c`` program of a worker: argv[1] is the supervisor's sys.path (JSON)."""


def with_port(listen: str, port: int) -> str:
    """``listen`` with its port replaced by ``port`` (``tcp:0:...`` -> ``tcp:43210:...``)."""
    kind, _, rest = listen.partition(":")
    options = rest.partition(":")[2]
    return f"{kind}:{port}" + (f":{options}" if options else "")


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == READY_FD and b"ready" in data and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"worker {self.index} exited before serving"))
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(Service):
    """The twistd-side service when ``workers > 1`` (see the module docstring)."""

    def __init__(
        self, config_path: str | Path, config: Any, reactor: Any = None, log_level: str = ""
    ) -> None:
        self.config_path = Path(config_path)
        self.log_level = log_level  # --log-level, passed on to every worker
        self.config = config
        self.count: int = config.workers
        self._reactor = reactor
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, _Worker] = {}
        self.reserved: dict[str, str] = {}
        self.metrics_dir: str | None = None
        self.stopping = False
        self.started: Deferred[None] | None = None

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:
        super().startService()
        for site in self.config.sites:
            if self.config.worker_listeners == "reuseport":
                # Reserve the port (tcp:0 gets one) without listening: a bound socket
                # takes no connections, the workers' listening ones do.
                sock = bind_listener(site.listen, reuse_port=True, backlog=False)
                self.reserved[site.listen] = with_port(site.listen, sock.getsockname()[1])
                self.sockets.setdefault(site.listen, sock)
            else:
                self.sockets.setdefault(site.listen, bind_listener(site.listen))
        self.metrics_dir = tempfile.mkdtemp(prefix="tgw-metrics-")
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.forward_hup))
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)

    async def _start(self) -> None:
        first = self.spawn(0)
        await first.ready
        rest = [self.spawn(i) for i in range(1, self.count)]
        for worker in rest:
            await worker.ready
        log.info("{n} workers serving", n=self.count)
        notify("READY=1", f"STATUS={self.count} workers serving")

    def _start_failed(self, failure: Any) -> None:
        log.failure("tgw workers could not start", failure)
        os.write(2, f"tgw: could not start: {failure.getErrorMessage()}\n".encode())

        def leave() -> None:
            os._exit(1)

        self.reactor.addSystemEventTrigger("after", "shutdown", leave)
        self.reactor.callLater(0, self.reactor.stop)

    def spawn(self, index: int) -> _Worker:
        worker = _Worker(self, index)
        listeners = {
            listen: (sock.fileno(), sock.family)
            for listen, sock in self.sockets.items()
            if listen not in self.reserved
        }
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, READY_FD: "r"}
        for fd, _ in listeners.values():
            child_fds[fd] = fd
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir or ""}
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        # Absolute entries: "" (the working directory) means the supervisor's, not the worker's.
        path = json.dumps([os.path.abspath(entry) for entry in sys.path])
        argv = [
            sys.executable,
            "-c",
            WORKER_BOOT,
            path,
            "--config",
            str(self.config_path),
            "--index",
            str(index),
            "--listeners",
            json.dumps(listeners),
            "--reuseport",
            json.dumps(self.reserved),
            "--count",
            str(self.count),
            "--runtime-dir",
            self.metrics_dir or "",
            "--reactor",
            "tgw" if is_gateway_reactor(self.reactor) else "default",
        ]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=child_fds)
        self.workers[index] = worker
        return worker

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        if worker.pid is not None and self.metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        if self.stopping or self.workers.get(worker.index) is not worker:
            return
        if self.started is not None and not self.started.called:
            return  # start-up fails through _start_failed
        log.warn(
            "worker {index} (pid {pid}) exited: {why}; restarting in {delay:g}s",
            index=worker.index,
            pid=worker.pid,
            why=reason.getErrorMessage(),
            delay=RESTART_DELAY,
        )
        self.reactor.callLater(RESTART_DELAY, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self.stopping:
            self.spawn(index)

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.pid is not None and not worker.ended.called:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)

    def forward_hup(self) -> None:
        log.info("SIGHUP: every worker reloads the configuration")
        notify(*reloading_lines())
        self.signal_workers(signal.SIGHUP)
        # Each worker reloads on its own; the supervisor has passed the signal on.
        notify("READY=1", f"STATUS={self.count} workers serving")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        notify("STOPPING=1", "STATUS=draining")
        self.signal_workers(signal.SIGTERM)
        drain = max((s.drain_timeout for s in self.config.sites), default=0.0)
        drain += self.config.drain_delay  # workers keep accepting that long first
        killer = self.reactor.callLater(drain + STOP_GRACE, self.signal_workers, signal.SIGKILL)
        for worker in list(self.workers.values()):
            await worker.ended
        if killer.active():
            killer.cancel()
        for sock in self.sockets.values():
            sock.close()
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("tgw workers stopped")


# --- the worker process -----------------------------------------------------------


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one worker: a gateway on inherited sockets, until SIGTERM."""
    parser = argparse.ArgumentParser(prog="tgw worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listeners", default="{}")
    parser.add_argument("--reuseport", default="{}")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--runtime-dir", default="")
    parser.add_argument("--reactor", choices=("tgw", "default"), default="tgw")
    parser.add_argument("--log-level", default="")
    args = parser.parse_args(argv)
    os.environ["TGW_WORKER_INDEX"] = str(args.index)  # logs name the worker (access_fields)
    use_worker_values()  # before any metric exists
    listeners = {k: (int(v[0]), int(v[1])) for k, v in json.loads(args.listeners).items()}
    if args.reactor == "tgw":  # what the supervisor runs, unless twistd --reactor chose
        from gwcore.net.reactor import install_if_unset

        install_if_unset()

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from gwcore.runtime.config_check import check_config
    from gwcore.runtime.logsetup import gateway_observer
    from gwcore.runtime.service import GatewayService

    checked = check_config(args.config)
    config = checked.config
    # The same level, format and quiet as the supervisor's log (gwcore.runtime.logsetup),
    # on standard error: standard output is the access log's (access_log = "-").
    observer = gateway_observer(
        lambda: textFileLogObserver(sys.stderr),
        lambda: sys.stderr,
        args.log_level or (config.log_level if config else "info"),
        config.log_format if config else "text",
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log.info("worker {index}: reactor {cls}", index=args.index, cls=type(reactor).__qualname__)
    if not checked.ok:
        for problem in checked.problems:
            print(f"tgw worker {args.index}: {problem}", file=sys.stderr)
        return 1
    service = GatewayService(
        checked,
        args.config,
        reactor,
        exit_on_failure=True,
        worker=WorkerRole(
            args.index,
            listeners,
            reuseport=json.loads(args.reuseport),
            count=args.count,
            runtime_dir=args.runtime_dir,
        ),
        freeze_heap=True,
    )

    def serving(_: Any) -> None:
        if service.failure is None:
            os.write(READY_FD, b"ready\n")
            os.close(READY_FD)

    def start() -> None:
        service.startService()
        assert service.started is not None
        service.started.addCallback(serving)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
