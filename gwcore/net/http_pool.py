"""The HTTP/1.1 upstream pool of one destination: connections kept per endpoint.

Envoy keeps a connection pool per upstream *host* and its circuit breakers per
*cluster*; nginx's ``keepalive`` and HAProxy's ``http-reuse`` also look for an idle
connection to the server the balancer chose. tgw does the same. Rules:

- Each request is given its endpoint order first (``plan``: the site's endpoint
  choice for this request — health, outlier ejection, the balancing policy, and for
  ``ring_hash``/``maglev`` the request's hash from the resolver's ``HashPolicies``,
  :mod:`gwcore.policy.request_hash`). It reuses an idle connection to the first
  endpoint of that order, else a new connection is dialled trying that order (connect
  retries and outlier ejection as for L4); the request takes the connection its dial
  made, whichever endpoint answered.
- Idle connections are kept **per endpoint**: at most ``max_idle`` each, each closed
  after ``idle_timeout``.
- A connection to an endpoint that left the catalog or turned critical
  (:meth:`Http1Pool.retain`) or was ejected (:meth:`Http1Pool.retire`) carries no
  further request: idle, it closes at once; busy, when its exchange ends (draining).
- The destination-wide limits are the cluster's circuit breakers: at most
  ``max_connections`` connections carrying or opening a request, at most
  ``max_pending`` requests waiting for one (beyond: 503 ``overflow``). Waiting
  requests are served in order. A request that waited is given its endpoint order
  again when a connection comes free or its turn to dial comes (the catalog, health
  or ejections may have changed meanwhile). The freed connection goes to the first
  one only if its endpoint is one that request may use now (``usable``: not critical,
  not ejected, still in the catalog, kept by the ``tgw_choose_endpoint`` addons), and,
  when a hash chose the request's endpoint, only if it is that endpoint (its affinity
  is the point of the hash). Otherwise the connection parks idle and the request
  dials its own order. Idle connections do not count against ``max_connections``.
- Without a ``plan`` (tests of the connection rules), a request takes any idle
  connection and dials with the dial step's own order.
- A cookie hash policy that generated a cookie (``CookieConfig``) adds its
  ``Set-Cookie`` to the response head.

The connection and stream rules are in :mod:`gwcore.net.http1_client`.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gwcore.net.http1_client import Dial, Http1Connection, Http1Stream, alpn_for_http1
from gwcore.net.http1_stray import unread_bytes
from gwcore.net.l7_core import UpstreamFailure
from gwcore.net.splice import UpstreamFactory
from gwcore.policy.model import Health

if TYPE_CHECKING:
    from gwcore.contract.http_flow import HttpRequest, HttpResponse
    from gwcore.net.l7_core import ResponseSink
    from gwcore.policy.model import Endpoint


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The site's upstream pool keys (``docs/l7.md``): ``max_idle`` per endpoint, the
    others per destination."""

    max_connections: int = 64
    max_idle: int = 16
    idle_timeout: float = 60.0
    max_pending: int = 256


@dataclass(frozen=True, slots=True)
class Choice:
    """One request's endpoint order (``endpoints``, tried in turn when dialling) and
    whether a request hash chose it (the request then waits for ``endpoints[0]``)."""

    endpoints: tuple[Endpoint, ...]
    hashed: bool = False
    set_cookie: str = ""


Plan = Callable[[Any, "HttpRequest"], Choice]
"""``plan(owner, request)``: the endpoint choice for one request of ``owner``."""

Usable = Callable[[Any], "Collection[Endpoint]"]
"""``usable(owner)``: every endpoint a request of ``owner`` may be sent to now."""


class _CookieSink:
    """Adds a generated hash cookie to the response head; the rest passes through."""

    __slots__ = ("cookie", "sink")

    def __init__(self, sink: ResponseSink, cookie: str) -> None:
        self.sink = sink
        self.cookie = cookie

    def response_head(self, response: HttpResponse) -> None:
        response.headers.add("set-cookie", self.cookie)
        self.sink.response_head(response)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


class Http1Pool:
    """The HTTP/1.1 connections to one destination (an ``UpstreamClient``)."""

    def __init__(
        self,
        reactor: Any,
        dial: Dial,
        limits: PoolLimits,
        released: Callable[[Endpoint], None] = lambda endpoint: None,
        plan: Plan | None = None,
        usable: Usable | None = None,
    ) -> None:
        self.reactor = reactor
        self.dial = dial
        self.limits = limits
        self.released = released
        self.plan = plan
        self.usable = usable
        # (address, port) -> the catalog's endpoint there, for endpoints not critical
        # (None until the first retain: every endpoint counts as present).
        self.present: dict[tuple[str, int], Endpoint] | None = None
        # Busy connections to ejected endpoints: closed when their exchange ends.
        self.draining: dict[Http1Connection, str] = {}
        self.idle: dict[Endpoint, deque[Http1Connection]] = {}
        self.busy: set[Http1Connection] = set()
        self.connecting = 0
        self.waiting: deque[Http1Stream] = deque()
        self.closed = False

    def open(self, request: HttpRequest, sink: ResponseSink, owner: Any = None) -> Http1Stream:
        choice = self.plan(owner, request) if self.plan is not None else None
        if choice is not None and choice.set_cookie:
            sink = _CookieSink(sink, choice.set_cookie)
        stream = Http1Stream(self, request, sink, owner)
        stream.choice = choice
        if self.closed:
            self._fail_later(stream, UpstreamFailure("unavailable", "the site is stopping", 503))
            return stream
        connection = self._take_idle(choice)
        if connection is not None:
            self.busy.add(connection)
            stream.attach(connection)
            return stream
        if len(self.waiting) >= self.limits.max_pending and self._full():
            self._fail_later(
                stream,
                UpstreamFailure(
                    "overflow",
                    f"{self.limits.max_connections} connections busy and "
                    f"{self.limits.max_pending} requests waiting",
                    503,
                ),
            )
            return stream
        self.waiting.append(stream)
        if not self._full():
            self._connect(stream)
        return stream

    def _take_idle(self, choice: Choice | None) -> Http1Connection | None:
        if choice is None:
            queues = list(self.idle.values())
        elif choice.endpoints:
            queue = self.idle.get(choice.endpoints[0])
            queues = [queue] if queue else []
        else:
            return None  # nothing usable: the dial says why
        for queue in queues:
            while queue:
                connection = queue.popleft()
                if not queue:
                    self.idle.pop(connection.endpoint, None)
                if connection.idle_call is not None and connection.idle_call.active():
                    connection.idle_call.cancel()
                connection.idle_call = None
                if connection.closed or connection.upstream.lost:
                    continue
                return connection
        return None

    def _full(self) -> bool:
        return len(self.busy) + self.connecting >= self.limits.max_connections

    def _fail_later(self, stream: Http1Stream, failure: UpstreamFailure) -> None:
        # Never call the sink from inside open(): the exchange has no stream yet.
        self.reactor.callLater(0, stream.failed, failure)

    def _connect(self, stream: Http1Stream) -> None:
        self.connecting += 1
        factory = UpstreamFactory(alpn_for_http1())
        choice: Choice | None = stream.choice
        if choice is None:
            d = self.dial(stream.owner, factory)
        else:
            d = self.dial(stream.owner, factory, choice.endpoints)
        d.addCallbacks(self._connected, self._connect_failed, (stream,), None, (stream,))

    def _waiting(self, stream: Http1Stream) -> bool:
        if stream.done:
            return False
        try:
            self.waiting.remove(stream)
        except ValueError:
            return False
        return True

    def _connected(self, result: tuple[Any, Endpoint, int, float], stream: Http1Stream) -> None:
        self.connecting -= 1
        upstream, endpoint, _, _ = result
        connection = Http1Connection(self, upstream, endpoint)
        if self.closed:
            connection.close("the site is stopping")
            return
        self.busy.add(connection)
        if self._waiting(stream):
            stream.attach(connection)  # the connection its dial made, whichever endpoint
        else:
            self._next(connection)

    def _connect_failed(self, failure: Any, stream: Http1Stream) -> None:
        self.connecting -= 1
        error = failure.value
        endpoint = getattr(error, "endpoint", None)
        if self._waiting(stream):
            stream.failed(UpstreamFailure("unavailable", str(error), 502, endpoint))
        self._dial_for_waiting()

    def _dial_for_waiting(self, replan: bool = True) -> None:
        # One dial per waiting request, as room comes: the next ones try their own.
        if self.waiting and not self._full() and not self.closed:
            stream = self.waiting[0]
            if replan and self.plan is not None and stream.choice is not None:
                # It waited: health, ejections or the catalog may have moved since its
                # endpoints were chosen (its cookie, if one was generated, stays).
                stream.choice = self.plan(stream.owner, stream.request)
            self._connect(stream)

    def _may_use(self, stream: Http1Stream, connection: Http1Connection) -> bool:
        if self.plan is None or stream.choice is None:
            return True
        # It waited: health, ejections or the catalog may have moved since its
        # endpoints were chosen (its cookie, if one was generated, stays).
        choice = stream.choice = self.plan(stream.owner, stream.request)
        if choice.hashed:
            return choice.endpoints[:1] == (connection.endpoint,)
        if self.usable is None:
            return connection.endpoint in choice.endpoints
        return connection.endpoint in self.usable(stream.owner)

    def _retired(self, connection: Http1Connection) -> str | None:
        """Why ``connection`` may carry no further request (None: it may)."""
        if self.draining:
            reason = self.draining.get(connection)
            if reason is not None:
                return reason
        endpoint = connection.endpoint
        present = self.present
        if present is not None and (endpoint.address, endpoint.port) not in present:
            return "endpoint left the catalog or turned critical"
        return None

    def _next(self, connection: Http1Connection) -> None:
        retired = self._retired(connection)
        if retired is not None:
            connection.close(retired)  # gone(): a waiting request dials its own order
            return
        waiting = self.waiting
        while waiting and waiting[0].done:
            waiting.popleft()
        if waiting and connection.reused and unread_bytes(connection.upstream):
            # Sent after its last response and not read yet: never a waiting request's answer.
            connection.close("the service sent data after its response")
            return
        if waiting and self._may_use(waiting[0], connection):
            waiting.popleft().attach(connection)
            return
        # Waiting requests are served in order (none starves behind later ones): when
        # the first one wants another endpoint, this connection parks and the slot it
        # held dials for that request (whose order _may_use just planned).
        self.busy.discard(connection)
        self._park(connection)
        self._dial_for_waiting(replan=False)

    def idle_again(self, connection: Http1Connection) -> None:
        """``connection`` finished an exchange and may carry another."""
        self._next(connection)

    def _park(self, connection: Http1Connection) -> None:
        if self.closed or self.idle_count(connection.endpoint) >= self.limits.max_idle:
            connection.close("idle connections at max_idle")
            return
        connection.idle_call = self.reactor.callLater(
            self.limits.idle_timeout, connection.close, "idle_timeout"
        )
        self.idle.setdefault(connection.endpoint, deque()).append(connection)

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        """Idle connections kept (to ``endpoint``, or to all)."""
        if endpoint is not None:
            return len(self.idle.get(endpoint, ()))
        return sum(len(q) for q in self.idle.values())

    def switched(self, connection: Http1Connection) -> None:
        """``connection`` became a tunnel (``101``): no pooled connection any more, it
        holds no ``max_connections`` slot; :meth:`gone` still follows when it closes."""
        self.busy.discard(connection)
        self._dial_for_waiting()

    def gone(self, connection: Http1Connection) -> None:
        """``connection`` closed (its picker count is released)."""
        self.busy.discard(connection)
        self.draining.pop(connection, None)
        queue = self.idle.get(connection.endpoint)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(connection)
            if not queue:
                del self.idle[connection.endpoint]
        self.released(connection.endpoint)
        self._dial_for_waiting()

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        """The catalog changed; ``endpoints`` are the destination's now. Connections to
        an endpoint no longer among them, or critical, take no further request: idle
        ones close now, busy ones when their exchange ends (:meth:`_next`). The others
        follow their endpoint's new entry (its weight or a passing/warning change keeps
        them)."""
        present = self.present = {
            (e.address, e.port): e for e in endpoints if e.health is not Health.CRITICAL
        }
        for endpoint in list(self.idle):
            now = present.get((endpoint.address, endpoint.port))
            queue = self.idle.get(endpoint)  # a close above may have emptied it
            if not queue:
                continue
            if now is None:
                for connection in list(queue):
                    connection.close("endpoint left the catalog or turned critical")
            elif now != endpoint:
                del self.idle[endpoint]
                for connection in queue:
                    connection.endpoint = now
                self.idle.setdefault(now, deque()).extend(queue)
        for connection in self.busy:
            now = present.get((connection.endpoint.address, connection.endpoint.port))
            if now is not None:
                connection.endpoint = now

    def retire(self, endpoint: Endpoint) -> None:
        """``endpoint`` was ejected: its idle connections close now, its busy ones when
        their exchange ends."""
        place = (endpoint.address, endpoint.port)
        for queued, queue in list(self.idle.items()):
            if (queued.address, queued.port) == place:
                for connection in list(queue):
                    connection.close("endpoint ejected")
        for connection in self.busy:
            if (connection.endpoint.address, connection.endpoint.port) == place:
                self.draining[connection] = "endpoint ejected"

    def retry(self, stream: Http1Stream) -> None:
        """``stream`` goes again, ahead of the requests waiting (see ``l7_retry``)."""
        if self.closed:
            self._fail_later(stream, UpstreamFailure("unavailable", "the site is stopping", 503))
            return
        self.waiting.appendleft(stream)

    def forget(self, stream: Http1Stream) -> None:
        """A waiting request was cancelled."""
        with contextlib.suppress(ValueError):
            self.waiting.remove(stream)

    def close(self) -> None:
        self.closed = True
        for queue in list(self.idle.values()):
            for connection in list(queue):
                connection.close("the site is stopping")
        waiting, self.waiting = self.waiting, deque()
        for stream in waiting:
            stream.failed(UpstreamFailure("unavailable", "the site is stopping", 503))
