"""TCP transports for the data path: write at once, read big.

Twisted's TCP transport queues every ``write`` and asks the reactor for write
readiness, so each write costs two extra ``epoll_ctl`` calls (register, then
unregister once flushed) and a trip through the reactor. A gateway's splice writes
right after it reads, when the socket's send buffer is almost always free, so these
transports try ``send`` immediately when nothing is queued (one ``sendmsg`` for
a sequence of pieces) and fall back to Twisted's buffering only for what the
kernel did not take. Reads use a 256 KiB buffer (Twisted reads 64 KiB), so a bulk
transfer crosses Python a quarter as often, and hand the bytes to the protocol from
``doRead`` itself (Twisted goes through ``_dataReceived``), and TCP_NODELAY is set: a relay
forwards what it has at once.

Closing: Twisted's ``loseConnection`` registers for writing and waits for the
reactor to report the socket writable, then sends zero bytes, unregisters, and
only then shuts the socket down (``loseWriteConnection`` likewise for a
half-close): two ``epoll_ctl``, a wake-up and a ``send`` per close even when
nothing is left to send. :func:`lose_connection` and :func:`lose_write_connection`
do at once what that reactor turn would do when nothing is buffered and no
producer is registered (the rule Twisted itself follows for a transport whose
write side is already closed: the protocol's ``connectionLost`` may run before
the call returns); with bytes still queued they are Twisted's own calls.

The local address (``getHost``) is a system call in Twisted, each time it is asked.
Here a connection accepted on a listener bound to one address reports the
listener's address (the kernel can give it no other), and any other connection asks
``getsockname`` once, when first asked, and keeps the answer. A connection whose
``keep_host`` says so reads it just before its socket closes, for an access record
built afterwards; nothing reads it for a connection nobody records.

Everything else — flow control, producers, connection loss — is Twisted's own
code path: the subclasses only override ``write``, ``writeSequence`` and ``doRead`` (and the
client's "connected" notification, and the end of ``doConnect``: a connected socket
keeps the read registration it has). Listening and
connecting go through :func:`listen` and :class:`TCPClientEndpoint`, which fall
back to Twisted's endpoints for any endpoint type other than ``tcp``/``tcp6``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import error, main, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure
from zope.interface import implementer

READ_SIZE = 256 * 1024

_IOV_MAX = 1024  # POSIX's minimum is 16; Linux's (UIO_MAXIOV) is 1024


def native(reactor: Any) -> bool:
    """Whether ``reactor`` runs real sockets (our transports need one; an in-memory
    test reactor gets Twisted's own endpoints instead)."""
    return isinstance(reactor, PosixReactorBase)


def _no_delay(sock: Any) -> None:
    # A relay forwards what it has at once; Nagle would hold a short tail (the end of
    # a response) until the peer's delayed ACK, some 40 ms later.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _WriteNow:
    """Mixin for Twisted TCP connections (see the module docstring)."""

    bufferSize = READ_SIZE  # doRead's recv size, and the producer high-water mark
    read_closed = False  # the peer's FIN was read (a half-closed connection)
    _shouldShutdown: bool
    _host: Any = None  # the local address, once known
    keep_host: Callable[[], bool] | None = None
    """Asked as the socket closes: read the local address now, for a record built later?"""

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = self._read_host()
        return host

    def _read_host(self) -> Any:
        return super().getHost()  # type: ignore[misc]  # getsockname

    def doRead(self) -> Any:
        """Twisted's ``tcp.Connection.doRead`` and ``_dataReceived`` in one frame (one
        Python call less per read event): read up to ``bufferSize`` bytes; nothing to
        read yet (``EWOULDBLOCK``) returns ``None``, any other socket error
        ``CONNECTION_LOST``, end of file (``b""``) ``CONNECTION_DONE`` (the reactor then
        disconnects with that reason), and data goes to ``protocol.dataReceived``
        (``None``: the connection goes on)."""
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == errno.EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def connectionLost(self, reason: Any) -> None:
        keep = self.keep_host
        if keep is not None and self._host is None and hasattr(self, "socket") and keep():
            with contextlib.suppress(OSError):
                self.getHost()
        super().connectionLost(reason)  # type: ignore[misc]

    # Attributes of twisted.internet.abstract.FileDescriptor, declared for typing.
    connected: int
    disconnecting: int
    _writeDisconnected: bool
    dataBuffer: bytes
    offset: int
    _tempDataLen: int
    _writeDisconnecting: bool
    socket: Any
    protocol: Any
    producer: Any
    TLS: bool

    def write(self, data: bytes) -> None:
        if (
            data
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and self._tempDataLen == 0
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # let Twisted's own write path meet (and report) the error
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def writeSequence(self, iovec: list[bytes]) -> None:
        """Several pieces (a read's TLS records) in one ``sendmsg`` when nothing is queued;
        what the kernel did not take is queued as one piece, in order."""
        if len(iovec) == 1:
            self.write(iovec[0])
            return
        if not (
            iovec
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and self._tempDataLen == 0
            and self.offset == len(self.dataBuffer)
            and len(iovec) <= _IOV_MAX
        ):
            super().writeSequence(iovec)  # type: ignore[misc]
            return
        try:
            sent = self.socket.sendmsg(iovec)
        except OSError:  # BlockingIOError, or an error Twisted's write path will report
            sent = 0
        if sent < sum(map(len, iovec)):
            super().write(b"".join(iovec)[sent:])  # type: ignore[misc]

    def _idle_for_close(self) -> bool:
        """Nothing queued, no producer, not closing yet: what a reactor turn would find
        before closing (abstract.FileDescriptor.doWrite)."""
        return bool(
            self.connected
            and not self.disconnecting
            and not self.TLS
            and self.producer is None
            and self._tempDataLen == 0
            and self.offset == len(self.dataBuffer)
        )

    def close_now(self) -> bool:
        """``loseConnection`` without the reactor turn, if nothing is left to send; False
        (nothing done) otherwise."""
        if not self._idle_for_close():
            return False
        # What the reactor does when doWrite reports the close (posixbase's
        # _disconnectSelectable): stop watching the socket, then connectionLost.
        self.stopReading()  # type: ignore[attr-defined]
        self.stopWriting()  # type: ignore[attr-defined]
        self.connectionLost(Failure(main.CONNECTION_DONE))  # type: ignore[attr-defined]
        return True

    def close_write_now(self) -> bool:
        """``loseWriteConnection`` (FIN, reading goes on) without the reactor turn, if
        nothing is left to send; False (nothing done) otherwise."""
        if self._writeDisconnected or self._writeDisconnecting or not self._idle_for_close():
            return False
        self._writeDisconnecting = True
        self._writeDisconnected = True  # set before the protocol hears of it, as doWrite does
        self._closeWriteConnection()  # type: ignore[attr-defined]
        # FIN is sent: the final close needs no second shutdown (it would only fail
        # with ENOTCONN once the peer has closed too).
        self._shouldShutdown = False
        return True

    def readConnectionLost(self, reason: Any) -> None:
        self.read_closed = True  # the peer's FIN was read: resuming would only read it again
        super().readConnectionLost(reason)  # type: ignore[misc]


def lose_connection(transport: Any) -> None:
    """``transport.loseConnection()``, at once when nothing is buffered (module docstring)."""
    if not (isinstance(transport, _WriteNow) and transport.close_now()):
        transport.loseConnection()


def keep_local_address(transport: Any, when: Callable[[], bool]) -> None:
    """Have ``transport`` read its local address as it closes if ``when()`` says so (for a
    record built afterwards). Transports other than ours answer ``getHost`` at any time."""
    if isinstance(transport, _WriteNow):
        transport.keep_host = when


def lose_write_connection(transport: Any) -> None:
    """``transport.loseWriteConnection()``, at once when nothing is buffered."""
    if not (isinstance(transport, _WriteNow) and transport.close_write_now()):
        transport.loseWriteConnection()


class Server(_WriteNow, tcp.Server):
    """An accepted connection with immediate writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_delay(self.socket)

    def _read_host(self) -> Any:
        port = self.server
        bound = port.bound_host() if isinstance(port, Port) else None
        return bound if bound is not None else super()._read_host()


class Port(tcp.Port):
    """A listening port whose connections are :class:`Server`."""

    transport = Server
    _bound: Any = None

    def startListening(self) -> None:
        super().startListening()
        host = self.getHost()
        try:
            specific = not ipaddress.ip_address(host.host).is_unspecified
        except ValueError:
            specific = False
        self._bound = host if specific else None

    def bound_host(self) -> Any:
        """The address every accepted connection has as its own, when the port listens on
        one address (not a wildcard); ``None`` otherwise."""
        return self._bound

    def hand_over(self) -> tuple[int, int]:
        """``(fd, address family)`` for a replacement site to adopt (a reload).

        Closing this port afterwards must not ``shutdown()`` the socket, which the
        replacement shares: that would stop it listening for both.
        """
        self._shouldShutdown = False
        return self.fileno(), self.addressFamily


class Client(_WriteNow, tcp.Client):
    """An outgoing connection with immediate writes; tells its factory when connected.

    To an IP literal (all the gateway dials: names are resolved before) the attempt
    starts at once, when its connector has set its timeout (:meth:`Connector.connect`),
    not in a later reactor turn through a ``callLater(0)`` and a Deferred of the
    address as Twisted's does; its socket is made non-blocking as it is created; the
    first ``connect`` asks no pending error of a socket that cannot have one; and the
    socket's first writable event ends the attempt with one ``getsockopt``.
    A name to resolve, or a socket that could not be made, takes Twisted's own path.
    """

    _started = False  # connect() was called: a wake-up asks the socket's error first
    _deferred_start = False  # the connector starts the attempt (an IP literal)

    def createInternetSocket(self) -> socket.socket:
        # One system call: Twisted's socket() then setblocking(False) costs an ioctl more.
        # (Python's sockets are close-on-exec already.)
        return socket.socket(self.addressFamily, self.socketType | socket.SOCK_NONBLOCK)

    def _finishInit(self, whenDone: Any, skt: Any, error: Any, reactor: Any) -> None:
        if whenDone is None or self._requiresResolution:
            super()._finishInit(whenDone, skt, error, reactor)  # type: ignore[misc]
            return
        self._commonConnection.__init__(self, skt, None, reactor)  # type: ignore[attr-defined]
        self._deferred_start = True

    def start(self) -> None:
        """Begin connecting to the literal address (called once, by the connector)."""
        if self._deferred_start:
            self._deferred_start = False
            self._setRealAddress(self.addr)  # type: ignore[attr-defined]  # resolves nothing

    def doConnect(self) -> None:
        """Twisted's ``doConnect`` (called to start the attempt, then when the socket is
        readable), except: the first call asks no ``SO_ERROR`` (a new socket has none), a
        writable socket is :meth:`_writable`, and once connected Twisted unregisters the
        socket for reading and writing, then registers it for reading again (three
        ``epoll_ctl``); here only the write registration goes (one), and
        ``_connectDone`` finds it reading."""
        self.doRead = self.doConnect  # until connected: "done or failed?"
        self.doWrite = self._writable
        if not hasattr(self, "connector"):
            return  # the attempt already failed (a call scheduled before it did)
        if self._started:
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))
                return
        self._started = True
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self.startReading()
            self.startWriting()
            return
        if result and result != errno.EISCONN:
            self.failIfNotConnected(error.getConnectError((result, os.strerror(result))))
            return
        self._connected()

    def _writable(self) -> None:
        """The connecting socket became writable: the attempt is over, and ``SO_ERROR``
        says how (connect(2)); Twisted's second ``connect`` to ask again is not needed."""
        if not hasattr(self, "connector"):
            return  # the attempt already failed (a call scheduled before it did)
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, os.strerror(err))))
            return
        self._connected()

    def _connected(self) -> None:
        del self.doWrite, self.doRead  # the class's own again
        self.stopWriting()
        self._connectDone()

    def _connectDone(self) -> None:
        _no_delay(self.socket)
        super()._connectDone()
        ready = getattr(self.connector.factory, "connection_made", None)
        if ready is not None and self.protocol is not None and self.connected:
            ready(self.protocol)


class Connector(tcp.Connector):
    def _makeTransport(self) -> Client:
        return Client(self.host, self.port, self.bindAddress, self, self.reactor)

    def connect(self) -> None:
        """Twisted's (a transport, its timeout, ``startedConnecting``), then the attempt
        at once (:class:`Client`)."""
        super().connect()
        transport = self.transport
        if isinstance(transport, Client):
            transport.start()


class _Connecting(ClientFactory):
    """Fires a Deferred with the protocol once it is connected (or with the failure)."""

    noisy = False

    def __init__(self, factory: Any, deferred: Deferred[Any]) -> None:
        self.factory = factory
        self.deferred = deferred

    def buildProtocol(self, addr: Any) -> Any:
        return self.factory.buildProtocol(addr)

    def connection_made(self, protocol: Any) -> None:
        if not self.deferred.called:
            self.deferred.callback(protocol)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


@implementer(IStreamClientEndpoint)
class TCPClientEndpoint:
    """A client endpoint to an IPv4/IPv6 literal, with :class:`Client` transports."""

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 30) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        connector: Connector | None = None

        def cancel(_: Deferred[Any]) -> None:
            if connector is not None:
                connector.stopConnecting()

        d: Deferred[Any] = Deferred(canceller=cancel)
        connector = Connector(
            self.host, self.port, _Connecting(protocolFactory, d), self.timeout, None, self.reactor
        )
        connector.connect()
        return d


_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def parse_tcp(description: str) -> tuple[int, str, int] | None:
    """(port, interface, backlog) of a ``tcp:``/``tcp6:`` endpoint string, else ``None``."""
    parts = [p.replace("\\:", ":") for p in _UNESCAPED_COLON.split(description)]
    if parts[0] not in ("tcp", "tcp6"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if set(options) - {"port", "interface", "backlog"} or len(positional) > 1:
        return None  # something we do not know: let Twisted interpret it
    port = options.get("port", positional[0] if positional else None)
    if port is None or not port.isdigit():
        return None
    interface = options.get("interface", "::" if parts[0] == "tcp6" else "")
    return int(port), interface, int(options.get("backlog", "50"))


def listen(reactor: Any, description: str, factory: Factory) -> Deferred[Any]:
    """Listen on an endpoint string; ``tcp``/``tcp6`` get :class:`Port` transports."""
    parsed = parse_tcp(description) if native(reactor) else None
    if parsed is None:
        return serverFromString(reactor, description).listen(factory)
    port, interface, backlog = parsed
    listening = Port(port, factory, backlog, interface, reactor)
    try:
        listening.startListening()
    except Exception as e:
        from twisted.internet.defer import fail

        return fail(e)
    return succeed(listening)


def adopt(
    reactor: Any, fd: int, family: int, factory: Factory, port: type[Port] | None = None
) -> Any:
    """Listen on an inherited listening socket (workers), with :class:`Port` transports
    (or ``port``, a subclass: ``shared_accept.SharedPort``)."""
    if not native(reactor):
        return reactor.adoptStreamPort(fd, family, factory)
    listening = (port or Port)._fromListeningDescriptor(reactor, fd, family, factory)
    listening.startListening()
    return listening
