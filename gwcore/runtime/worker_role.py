"""What a worker process is told by its supervisor, and how a listening socket is bound.

This is the interface between :mod:`gwcore.runtime.workers` (which owns worker processes and
starts a :class:`~gwcore.runtime.service.GatewayService` in each) and the service, which only
needs to know which inherited socket serves which ``listen`` string. Keeping it here, below
both, is what keeps service and workers from importing each other.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

_TCP = re.compile(r"^(tcp6?):(\d+)((?::[a-zA-Z]+=[^:]*)*)$")


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process is told by its supervisor."""

    index: int
    listeners: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Site ``listen`` string -> (inherited fd, address family)."""
    _bound: list[socket.socket] = field(default_factory=list, repr=False)
    reuseport: dict[str, str] = field(default_factory=dict)
    """``worker_listeners = "reuseport"``: site ``listen`` -> the address to bind
    (the port the supervisor reserved for a ``tcp:0``)."""
    count: int = 1
    """How many workers the supervisor runs."""
    runtime_dir: str = ""
    """The supervisor's private directory (mode 0700): metrics files, and each
    worker's private admin socket (:meth:`admin_socket`)."""

    def admin_socket(self, index: int) -> str:
        """The unix socket where worker ``index`` answers admin requests for itself
        (worker 0's admin endpoint asks every worker: ``gwcore.net.admin_workers``)."""
        return os.path.join(self.runtime_dir, f"admin-{index}.sock")

    def listener_for(self, listen: str) -> tuple[int, int]:
        """The inherited socket for ``listen``; or one bound here with ``SO_REUSEPORT``:
        this worker's own (``worker_listeners = "reuseport"``), or for a listen address
        added by a reload. The kernel spreads connections over the group."""
        if listen not in self.listeners:
            sock = bind_listener(self.reuseport.get(listen, listen), reuse_port=True)
            self._bound.append(sock)
            self.listeners[listen] = (sock.fileno(), sock.family)
        return self.listeners[listen]

    def shares(self, listen: str) -> bool:
        """Whether this worker's socket for ``listen`` is one accept queue shared with
        the other workers (inherited from the supervisor), not one bound here."""
        fd = self.listener_for(listen)[0]
        return self.count > 1 and all(sock.fileno() != fd for sock in self._bound)


def bind_listener(listen: str, reuse_port: bool = False, backlog: bool = True) -> socket.socket:
    """A listening, inheritable, non-blocking socket for a ``tcp:``/``tcp6:`` endpoint string
    (only bound with ``backlog=False``: a port reservation that takes no connections)."""
    match = _TCP.match(listen)
    if match is None:
        raise ValueError(f"workers need tcp: or tcp6: listen endpoints, not {listen!r}")
    kind, port, rest = match.groups()
    options = dict(part.split("=", 1) for part in rest.split(":") if part)
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    host = options.get("interface", "::" if family == socket.AF_INET6 else "0.0.0.0")
    if ":" in host:
        family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, int(port)))
    if not backlog:
        return sock
    sock.listen(int(options.get("backlog", 1024)))
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock
