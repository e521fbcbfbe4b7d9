"""Opening the gateway's side of a connection: strategies and the retry loop.

A strategy connects to *one* endpoint; :func:`connect_first_available` walks the
endpoints the balancer chose, in order, up to ``max_attempts``, each with the
connect timeout, and reports every failed attempt. Cancelling its Deferred (the
client left) cancels the attempt in flight.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Sequence
from inspect import iscoroutine
from typing import TYPE_CHECKING, Any

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.python.failure import Failure

from gwcore.net.fasttcp import TCPClientEndpoint, native
from gwcore.policy.model import Destination, Endpoint, TLSMode

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint

    from gwcore.contract.providers import UpstreamStrategy


class UpstreamConnectError(Exception):
    """A connect attempt (or all of them) failed; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str, endpoint: Endpoint | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.endpoint = endpoint
        """The last endpoint tried (the access log's ``upstream_host``), if any."""


def classify_connect_error(exc: BaseException) -> str:
    if isinstance(exc, UpstreamConnectError):
        return exc.reason
    if isinstance(exc, neterror.ConnectionRefusedError):
        return "refused"
    timeouts = (
        neterror.TimeoutError,
        neterror.TCPTimedOutError,
        DeferredTimeoutError,
        TimeoutError,
    )
    if isinstance(exc, timeouts):
        return "timeout"
    if isinstance(exc, neterror.DNSLookupError):
        return "dns"
    return "error"


@functools.lru_cache(maxsize=4096)
def _literal(address: str) -> tuple[str, int] | None:
    """``(normalised address, IP version)`` of an IP literal, ``None`` for a host name.

    Remembered: every connection to an endpoint asks, and parsing costs more than the
    rest of building the endpoint.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return str(ip), ip.version


def tcp_endpoint(reactor: Any, endpoint: Endpoint, timeout: float) -> IStreamClientEndpoint:
    """A client endpoint for an address that is an IPv4/IPv6 literal or a hostname."""
    literal = _literal(endpoint.address)
    if literal is None:
        return HostnameEndpoint(
            reactor, endpoint.address.encode("idna"), endpoint.port, timeout=timeout
        )
    address, version = literal
    if native(reactor):
        return TCPClientEndpoint(reactor, address, endpoint.port, timeout=timeout)
    if version == 6:
        return TCP6ClientEndpoint(reactor, endpoint.address, endpoint.port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, endpoint.address, endpoint.port, timeout=timeout)


class PlainTCPStrategy:
    """Plain TCP to the endpoint: for destinations without ``CAFile`` (Consul's rule)."""

    name = "plain"

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def applies_to(self, destination: Destination) -> bool:
        return destination.tls.mode is TLSMode.PLAIN

    def connect(
        self,
        destination: Destination,
        endpoint: Endpoint,
        factory: IProtocolFactory,
        timeout: float,
    ) -> Deferred[IProtocol]:
        return tcp_endpoint(self.reactor, endpoint, timeout).connect(factory)


def choose_strategy(
    strategies: Sequence[UpstreamStrategy], destination: Destination
) -> UpstreamStrategy:
    for strategy in strategies:
        if strategy.applies_to(destination):
            return strategy
    mode = destination.tls.mode.value
    raise UpstreamConnectError(
        "no_strategy",
        f"destination {destination.name} asks for {mode} origination (CAFile is set) and no "
        f"upstream strategy in this site provides it; refusing rather than sending plaintext",
    )


class _Attempts:
    """The retry loop of :func:`connect_first_available` as plain callbacks.

    One of these per connection (a coroutine would cost a generator, an
    ``inlineCallbacks`` driver and two more Deferreds on every handshake).
    """

    __slots__ = (
        "clock",
        "current",
        "destination",
        "endpoints",
        "factory",
        "index",
        "last",
        "on_failure",
        "result",
        "started",
        "strategy",
        "timeout",
    )

    def __init__(
        self,
        strategy: UpstreamStrategy,
        destination: Destination,
        endpoints: Sequence[Endpoint],
        factory: IProtocolFactory,
        timeout: float,
        clock: Callable[[], float],
        on_failure: Callable[[Endpoint, str, str, bool], None],
    ) -> None:
        self.strategy = strategy
        self.destination = destination
        self.endpoints = endpoints
        self.factory = factory
        self.timeout = timeout
        self.clock = clock
        self.on_failure = on_failure
        self.index = 0
        self.started = 0.0
        self.last = "no endpoints"
        self.current: Deferred[Any] | None = None
        self.result: Deferred[tuple[Any, Endpoint, int, float]] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Any]) -> None:
        # The client left: cancel the attempt in flight; its CancelledError ends the loop.
        current = self.current
        if current is not None:
            current.cancel()

    def next(self) -> None:
        endpoint = self.endpoints[self.index]
        self.started = self.clock()
        try:
            attempt = self.strategy.connect(self.destination, endpoint, self.factory, self.timeout)
            if iscoroutine(attempt):
                attempt = Deferred.fromCoroutine(attempt)
        except Exception as e:  # a strategy that raises instead of failing its Deferred
            self._failed(e, endpoint)
            return
        self.current = attempt
        attempt.addCallbacks(self._connected, self._failed, (endpoint,), None, (endpoint,), None)

    def _connected(self, protocol: Any, endpoint: Endpoint) -> None:
        self.current = None
        if not self.result.called:
            self.result.callback((protocol, endpoint, self.index + 1, self.clock() - self.started))

    def _failed(self, reason: Any, endpoint: Endpoint) -> None:
        self.current = None
        error = reason.value if isinstance(reason, Failure) else reason
        if isinstance(error, CancelledError):
            if not self.result.called:
                self.result.errback(reason if isinstance(reason, Failure) else Failure(error))
            return
        if self.result.called:
            return
        attempt = self.index + 1
        kind = classify_connect_error(error)
        self.last = f"{endpoint}: {kind}: {error}"
        self.on_failure(endpoint, kind, str(error), attempt == len(self.endpoints))
        self.index = attempt
        if attempt < len(self.endpoints):
            self.next()
            return
        self.result.errback(
            UpstreamConnectError(
                "unavailable",
                f"all {len(self.endpoints)} attempts failed, last: {self.last}",
                endpoint,
            )
        )


def connect_first_available(
    strategy: UpstreamStrategy,
    destination: Destination,
    endpoints: Sequence[Endpoint],
    factory: IProtocolFactory,
    timeout: float,
    on_failure: Callable[[Endpoint, str, str, bool], None],
    clock: Callable[[], float] = time.monotonic,
) -> Deferred[tuple[Any, Endpoint, int, float]]:
    """Try ``endpoints`` in order; fire with (protocol, endpoint, attempts, seconds).

    ``on_failure(endpoint, reason, detail, final)`` is called after each failed
    attempt. Fails with :class:`UpstreamConnectError` when none connected.
    """
    if not endpoints:
        return Deferred.fromCoroutine(_no_endpoints(destination))
    attempts = _Attempts(strategy, destination, endpoints, factory, timeout, clock, on_failure)
    attempts.next()
    return attempts.result


async def _no_endpoints(destination: Destination) -> Any:
    raise UpstreamConnectError(
        "no_endpoints",
        f"no healthy endpoints for {destination.name} ({len(destination.endpoints)} registered)",
    )
