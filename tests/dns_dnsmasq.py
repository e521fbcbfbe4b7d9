"""dnsmasq (Debian's package, a DNS server we did not write) run by a test on 127.0.0.1.

:class:`Dnsmasq` starts ``/usr/sbin/dnsmasq --no-daemon`` on a free high port with no
upstream, no hosts file and no config file, authoritative (``--local``) for the test
domain so unknown names are NXDOMAIN, plus the records the test passes as options
(``--srv-host=``, ``--host-record=``, ``--cname=``). It waits (bounded) until the
server answers, and :meth:`stop` terminates it.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.dns_server import free_udp_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
STARTUP_TIMEOUT = 10.0


class Dnsmasq:
    def __init__(self, options: Sequence[str], domain: str = "example.test") -> None:
        self.port = free_udp_port()
        self.args = [
            DNSMASQ,
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            f"--local=/{domain}/",
            *options,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Dnsmasq:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"dnsmasq exited with {self.process.returncode}: {out}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dnsmasq did not answer in time")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        """One blocking UDP query for ``version.bind`` (any reply means it is up)."""
        question = b"\x07version\x04bind\x00" + struct.pack("!HH", 16, 3)
        packet = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(packet, ("127.0.0.1", self.port))
                s.recvfrom(4096)
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def dnsmasq() -> Iterator:
    """A factory: ``dnsmasq([...options])`` starts one; all are stopped after the test."""
    started: list[Dnsmasq] = []

    def make(options: Sequence[str], domain: str = "example.test") -> Dnsmasq:
        server = Dnsmasq(options, domain)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()
