"""What the resolver sends DNS queries and reads its files with (Twisted Names, the disk).

- :class:`ServerClient`: Twisted Names' ``client.Resolver`` for one nameserver, whose
  UDP queries carry an EDNS0 OPT record (RFC 6891) with the payload size asked for.
  Failover between nameservers is :class:`gwcore.net.resolver.DNSResolver`'s, so
  each client knows one server (and a truncated answer goes to TCP on that server).
- :class:`FileReader`: a small file (resolv.conf, hosts) parsed again only when it
  changed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.names import client, dns


class _EDNSDatagramProtocol(dns.DNSDatagramProtocol):
    """Twisted Names' UDP query protocol, adding an OPT record (RFC 6891) to each query."""

    payload = 0

    def writeMessage(self, message: dns.Message, address: tuple[str, int]) -> None:
        if self.payload:
            message.additional = [*message.additional, dns._OPTHeader(udpPayloadSize=self.payload)]
        super().writeMessage(message, address)


class ServerClient(client.Resolver):
    """Twisted Names' client for one nameserver, whose UDP queries carry EDNS0 ``payload``
    (0: none). Failover between nameservers is :class:`DNSResolver`'s."""

    def __init__(self, server: tuple[str, int], payload: int, reactor: Any) -> None:
        super().__init__(servers=[server], reactor=reactor)
        self._payload = payload

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        proto = _EDNSDatagramProtocol(self, reactor=self._reactor)
        proto.payload = self._payload
        size = max(8192, self._payload)
        for attempt in range(100):
            try:
                # A random source port, as Twisted Names does (spoofed answers must guess it).
                self._reactor.listenUDP(
                    dns.randomSource(), proto, interface=interface, maxPacketSize=size
                )
            except CannotListenError as e:
                if getattr(e.socketError, "errno", None) == errno.EMFILE or attempt == 99:
                    raise  # out of descriptors, or something stranger than a busy port
                continue
            break
        return proto


class FileReader:
    """A small file parsed again only when its (inode, size, mtime) changed."""

    def __init__(self, path: str, parse: Callable[[str], Any], empty: Any) -> None:
        self.path = path
        self._parse = parse
        self._empty = empty
        self._stamp: tuple[int, int, int] | None = None
        self._value = empty

    def current(self) -> Any:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._value = None, self._empty
            return self._value
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self._value = self._parse(f.read(1 << 20))
            except OSError:
                self._value = self._empty
            self._stamp = stamp
        return self._value
