"""Talking to a Consul agent over HTTP: one bounded client, and blocking-query watches.

Rules of the blocking-query loop (reference §5, Consul's ``api-docs/features/blocking``):

1. The first query of a watch has no ``index`` and returns at once. Every later query
   sends ``?index=<last X-Consul-Index>&wait=<wait>``; the agent holds it until the
   result changes or ``wait`` (plus up to wait/16 of jitter) has passed.
2. A return does not mean a change: the watch calls its ``on_change`` only when the
   index moved, and the callers compare content before they publish anything.
3. An index that goes **backwards** (the agent restarted, a snapshot was restored)
   resets the watch to index 0, so the next query is a fresh non-blocking read.
4. An index below 1 is used as 1, so a broken agent cannot turn the loop into a busy
   poll of non-blocking reads.
5. Queries of one watch are rate limited by a token bucket (``rate`` per second, burst
   2), whatever the agent answers.
6. A failed query (no connection, a timeout, a non-2xx answer, bad JSON) is retried
   after an exponential back-off with jitter: ``d = min(retry_max, retry_min * 2**n)``
   and the delay is uniform in ``[d/2, d]``. The error goes to ``on_error`` each time;
   the watch never stops on its own.
7. :meth:`BlockingWatch.stop` cancels the query in flight and any pending timer.

Sockets: every request of a :class:`ConsulClient` waits for one of ``max_connections``
slots, and finished connections are kept (up to the same number) for reuse, so a
client never holds more than ``max_connections`` sockets whatever the number of
watches. Plugins of one process that name the same agent with the same settings
share one client (:func:`acquire_client`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    maybeDeferred,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gwcore.policy.config import SectionReader

DEFAULT_ADDRESS = "http://127.0.0.1:8500"
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
DEFAULT_MAX_CONNECTIONS = 16
MIN_MAX_CONNECTIONS = 8  # the long polls of the three Consul plugins fit in 7 slots
DEFAULT_TIMEOUT = 10.0
DEFAULT_RATE = 5.0
RATE_BURST = 2
DEFAULT_RETRY_MIN = 0.5
DEFAULT_RETRY_MAX = 60.0
MAX_BODY = 64 << 20
TOKEN_HEADER = b"X-Consul-Token"

# The permission each endpoint needs (reference §5), named in the one-time 403 report.
PERMISSIONS: Mapping[str, str] = {
    "gateway-services": "service:read on the gateway name",
    "catalog-services": "service:read",
    "health-state": "node:read and service:read",
    "catalog-nodes": "node:read",
    "agent-self": "agent:read",
    "health-service": "service:read and node:read on the service and its nodes",
    "config": "service:read on the service (config entries)",
    "ca-roots": "none (agent endpoint)",
    "ca-leaf": "service:write on the service",
    "intentions-match": "intentions:read",
    "agent-register": "service:write on the gateway name",
    "agent-deregister": "service:write on the gateway name",
}


class ConsulError(Exception):
    """A Consul request failed. ``kind`` is a bounded label for metrics."""

    def __init__(self, endpoint: str, kind: str, detail: str, status: int = 0) -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.kind = kind
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class ConsulResponse:
    """A 2xx answer: status, ``X-Consul-Index`` (0 when absent) and the body."""

    status: int
    index: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """How to reach the agent (the connection keys every Consul plugin section accepts).

    ``token_file`` is an absolute path (resolved against the config file when read).
    """

    address: str = DEFAULT_ADDRESS
    token: str = field(default="", repr=False)  # never in a log line or an error
    token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    datacenter: str = ""
    wait: float = DEFAULT_WAIT
    timeout: float = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    rate: float = DEFAULT_RATE
    retry_min: float = DEFAULT_RETRY_MIN
    retry_max: float = DEFAULT_RETRY_MAX

    @property
    def scheme(self) -> str:
        return urlsplit(self.address).scheme


CONNECTION_KEYS = (
    "address",
    "token",
    "token_file",
    "ca_file",
    "cert_file",
    "key_file",
    "datacenter",
    "wait",
    "timeout",
    "max_connections",
    "rate",
    "retry_min",
    "retry_max",
)


def read_consul_settings(reader: SectionReader, base_dir: Path) -> ConsulSettings:
    """Read the connection keys of a Consul plugin section (problems go to ``reader``)."""
    address = reader.string("address", DEFAULT_ADDRESS) or DEFAULT_ADDRESS
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem("address", f"must be an http:// or https:// URL, not {address!r}")
        address = DEFAULT_ADDRESS
    elif parts.path not in ("", "/"):
        reader.problem("address", "must not have a path (the agent's API is at /v1)")

    def path_key(name: str) -> str:
        value = reader.string(name, "") or ""
        if not value:
            return ""
        path = Path(value)
        return str(path if path.is_absolute() else base_dir / path)

    token = reader.string("token", "") or ""
    token_file = path_key("token_file")
    if token and token_file:
        reader.problem("token_file", "set token or token_file, not both")
    ca_file, cert_file, key_file = path_key("ca_file"), path_key("cert_file"), path_key("key_file")
    if bool(cert_file) != bool(key_file):
        reader.problem("cert_file", "cert_file and key_file go together")
    if (ca_file or cert_file) and urlsplit(address).scheme != "https":
        reader.problem("ca_file", "TLS files need an https:// address")
    datacenter = reader.string("datacenter", "") or ""
    wait = reader.duration("wait", DEFAULT_WAIT, minimum=0.1)
    if wait > MAX_WAIT:
        reader.problem("wait", f"must be at most {MAX_WAIT:g}s (Consul's maximum)")
        wait = MAX_WAIT
    return ConsulSettings(
        address=address.rstrip("/"),
        token=token,
        token_file=token_file,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        datacenter=datacenter,
        wait=wait,
        timeout=reader.duration("timeout", DEFAULT_TIMEOUT, minimum=0.1),
        max_connections=reader.integer(
            "max_connections", DEFAULT_MAX_CONNECTIONS, minimum=MIN_MAX_CONNECTIONS, maximum=1024
        ),
        rate=reader.number("rate", DEFAULT_RATE, minimum=0.1, maximum=1000),
        retry_min=reader.duration("retry_min", DEFAULT_RETRY_MIN, minimum=0.01),
        retry_max=reader.duration("retry_max", DEFAULT_RETRY_MAX, minimum=0.01),
    )


def check_files(settings: ConsulSettings) -> list[tuple[str, str]]:
    """``(key, message)`` for every configured file that cannot be read (for validation)."""
    problems = []
    for key in ("token_file", "ca_file", "cert_file", "key_file"):
        path = getattr(settings, key)
        if path and not os.access(path, os.R_OK):
            problems.append((key, f"{path!r} cannot be read"))
    return problems


# --- the client -------------------------------------------------------------------


class _TokenSource:
    """The ACL token: from config, or from a file re-read whenever it changes."""

    def __init__(self, token: str, path: str) -> None:
        self._token = token
        self._path = path
        self._stamp: tuple[float, int] | None = None

    def current(self) -> str:
        if not self._path:
            return self._token
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                self._token = Path(self._path).read_text().strip()
                self._stamp = stamp
        except OSError:
            pass  # keep the last token read; the request will say what is wrong
        return self._token


@implementer(IPolicyForHTTPS)
class _AgentTLS:
    """Verify the agent against the configured CA, optionally presenting a client cert."""

    def __init__(self, settings: ConsulSettings) -> None:
        from twisted.internet import ssl

        self._trust = None
        if settings.ca_file:
            data = Path(settings.ca_file).read_bytes()
            from gwcore.contract import pki

            roots = [
                ssl.Certificate.loadPEM(pki.certificate_pem(c)) for c in pki.load_certificates(data)
            ]
            self._trust = ssl.trustRootFromCertificates(roots)
        self._client = None
        if settings.cert_file:
            pem = Path(settings.cert_file).read_bytes() + Path(settings.key_file).read_bytes()
            self._client = ssl.PrivateCertificate.loadPEM(pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(
            hostname.decode("ascii"), trustRoot=self._trust, clientCertificate=self._client
        )


class _BoundedBody(Protocol):
    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()  # type: ignore[attr-defined]
            if not self._finished.called:
                self._finished.errback(ValueError(f"body larger than {self._limit} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._finished.called:
            return
        if reason.check(ResponseDone):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


class ConsulClient:
    """HTTP requests to one agent, at most ``max_connections`` at a time (see module doc)."""

    def __init__(self, reactor: Any, settings: ConsulSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = settings.max_connections
        self.pool.cachedConnectionTimeout = 120
        self.pool.retryAutomatically = False  # a blocking GET is retried by its watch
        policy = _AgentTLS(settings) if settings.scheme == "https" else None
        kwargs: dict[str, Any] = {"pool": self.pool, "connectTimeout": settings.timeout}
        if policy is not None:
            kwargs["contextFactory"] = policy
        self._agent = Agent(reactor, **kwargs)
        self._slots = DeferredSemaphore(settings.max_connections)
        self._token = _TokenSource(settings.token, settings.token_file)
        self.requests = 0

    @property
    def in_flight(self) -> int:
        return self._slots.limit - self._slots.tokens

    def get(
        self,
        endpoint: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        *,
        index: int = 0,
        wait: float | None = None,
    ) -> Deferred[ConsulResponse]:
        """GET ``path``; with ``index`` > 0 a blocking query waiting up to ``wait``."""
        params = list(query)
        if self.settings.datacenter:
            params.append(("dc", self.settings.datacenter))
        timeout = self.settings.timeout
        if index > 0:
            wait = self.settings.wait if wait is None else wait
            params += [("index", str(index)), ("wait", f"{int(wait * 1000)}ms")]
            timeout += wait + wait / 16
        return self.request(endpoint, b"GET", path, params, timeout=timeout)

    def put(self, endpoint: str, path: str, body: Any = None) -> Deferred[ConsulResponse]:
        return self.request(endpoint, b"PUT", path, (), body=body, timeout=self.settings.timeout)

    def request(
        self,
        endpoint: str,
        method: bytes,
        path: str,
        query: Sequence[tuple[str, str]],
        *,
        body: Any = None,
        timeout: float,
    ) -> Deferred[ConsulResponse]:
        """One request in a slot; fails with :class:`ConsulError` (``endpoint`` names it)."""
        url = self.settings.address + quote(path, safe="/:*@")
        if query:
            url += "?" + urlencode(query)

        timed_out: list[bool] = []

        def run() -> Deferred[ConsulResponse]:
            d = Deferred.fromCoroutine(self._request(endpoint, method, url, body))

            def expire() -> None:
                timed_out.append(True)
                d.cancel()

            call = self.reactor.callLater(timeout, expire)

            def done(result: Any) -> Any:
                if call.active():
                    call.cancel()
                return result

            return d.addBoth(done)

        d = self._slots.run(run)
        return d.addErrback(self._as_consul_error, endpoint, timeout, timed_out)

    async def _request(self, endpoint: str, method: bytes, url: str, body: Any) -> ConsulResponse:
        headers = Headers({b"Accept": [b"application/json"]})
        token = self._token.current()
        if token:
            headers.addRawHeader(TOKEN_HEADER, token.encode())
        producer = None
        if body is not None:
            from io import BytesIO

            from twisted.web.client import FileBodyProducer

            producer = FileBodyProducer(BytesIO(json.dumps(body).encode()))
            headers.addRawHeader(b"Content-Type", b"application/json")
        self.requests += 1
        response = await self._agent.request(method, url.encode(), headers, producer)
        finished: Deferred[bytes] = Deferred()
        response.deliverBody(_BoundedBody(finished, MAX_BODY))
        data = await finished
        index = 0
        raw = response.headers.getRawHeaders(b"X-Consul-Index")
        if raw:
            try:
                index = int(raw[0])
            except ValueError:
                index = 0
        if not 200 <= response.code < 300:
            text = data[:200].decode("utf-8", "replace").strip()
            kind = "acl_denied" if response.code == 403 else f"http_{response.code}"
            raise ConsulError(endpoint, kind, f"HTTP {response.code}: {text}", response.code)
        return ConsulResponse(response.code, index, data)

    def _as_consul_error(
        self, failure: Failure, endpoint: str, timeout: float, timed_out: list[bool]
    ) -> Failure:
        if failure.check(ConsulError):
            return failure
        if timed_out:
            return Failure(ConsulError(endpoint, "timeout", f"no answer in {timeout:g}s"))
        if failure.check(CancelledError):
            return failure  # the caller cancelled (a watch stopping)
        value = failure.value
        detail = f"{type(value).__name__}: {value}"
        reasons = getattr(value, "reasons", None)
        if reasons:
            detail = "; ".join(
                f"{r.type.__name__}: {r.getErrorMessage()}".rstrip(": ") for r in reasons
            )
        return Failure(ConsulError(endpoint, "unreachable", detail))

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()


_shared: dict[tuple[int, ConsulSettings], list[Any]] = {}


def acquire_client(reactor: Any, settings: ConsulSettings) -> ConsulClient:
    """The process's client for ``settings`` (created on first use; release it when done)."""
    key = (id(reactor), settings)
    entry = _shared.get(key)
    if entry is None:
        entry = _shared[key] = [ConsulClient(reactor, settings), 0]
    entry[1] += 1
    return entry[0]


def release_client(client: ConsulClient) -> Deferred[None] | None:
    """Give a client back; the last holder closes its idle connections."""
    key = (id(client.reactor), client.settings)
    entry = _shared.get(key)
    if entry is None or entry[0] is not client:
        return None
    entry[1] -= 1
    if entry[1] > 0:
        return None
    del _shared[key]
    return client.close()


# --- the watch loop ----------------------------------------------------------------


class _TokenBucket:
    def __init__(self, clock: Any, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._at = clock.seconds()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one is available)."""
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


def backoff_delay(failures: int, retry_min: float, retry_max: float, rng: random.Random) -> float:
    """Rule 6: exponential back-off with jitter for the ``failures``-th failure in a row."""
    ceiling = min(retry_max, retry_min * 2 ** max(0, failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass
class BlockingWatch:
    """A blocking-query loop on one endpoint (rules at the top of this module).

    ``on_change(response)`` runs when the index moved (it may return a Deferred, which
    the loop awaits before the next query); ``on_ok(endpoint)`` after every answer,
    changed or not; ``on_error(error)`` on every failure. A change handler that raises
    is reported through ``on_error`` too.
    """

    client: ConsulClient
    endpoint: str
    path: str
    on_change: Callable[[ConsulResponse], Any]
    on_error: Callable[[ConsulError], None]
    query: Sequence[tuple[str, str]] = ()
    on_ok: Callable[[str], None] | None = None
    wait: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    index: int = 0
    failures: int = 0
    resets: int = 0
    queries: int = 0
    _running: bool = False
    _pending: Deferred[Any] | None = None
    _done: Deferred[None] | None = None

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._bucket = _TokenBucket(self.client.reactor, self.client.settings.rate, RATE_BURST)
        self._done = Deferred.fromCoroutine(self._loop())
        self._done.addErrback(lambda f: f.trap(CancelledError))

    def stop(self) -> None:
        self._running = False
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()

    @property
    def running(self) -> bool:
        return self._running

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda _: call.cancel() if call.active() else None)
        call = self.client.reactor.callLater(seconds, d.callback, None)
        return d

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    async def _loop(self) -> None:
        settings = self.client.settings
        while self._running:
            delay = self._bucket.delay()
            if delay > 0:
                await self._wait(self._sleep(delay))
                if not self._running:
                    return
            self.queries += 1
            try:
                response = await self._wait(
                    self.client.get(
                        self.endpoint, self.path, self.query, index=self.index, wait=self.wait
                    )
                )
            except ConsulError as e:
                if not self._running:
                    return
                self.failures += 1
                self._report(e)
                await self._wait(
                    self._sleep(
                        backoff_delay(
                            self.failures, settings.retry_min, settings.retry_max, self.rng
                        )
                    )
                )
                continue
            except CancelledError:
                return
            if not self._running:
                return
            self.failures = 0
            if self.on_ok is not None:
                with contextlib.suppress(Exception):
                    self.on_ok(self.endpoint)
            new = response.index
            if self.index and new < self.index:
                self.index = 0  # rule 3: start over with a non-blocking read
                self.resets += 1
                continue
            if new == self.index and self.index:
                continue  # rule 2: wait expired, nothing changed
            self.index = max(new, 1)  # rule 4
            try:
                await self._wait(maybeDeferred(self.on_change, response))
            except CancelledError:
                return
            except Exception as e:
                self._report(
                    e
                    if isinstance(e, ConsulError)
                    else ConsulError(self.endpoint, "invalid", str(e))
                )
                # Read again from scratch next time, after a pause: the data was unusable.
                self.index = 0
                self.failures += 1
                await self._wait(
                    self._sleep(
                        backoff_delay(
                            self.failures, settings.retry_min, settings.retry_max, self.rng
                        )
                    )
                )

    def _report(self, error: ConsulError) -> None:
        with contextlib.suppress(Exception):  # a reporter must not stop the watch
            self.on_error(error)


# --- freshness, errors and metrics of one plugin's Consul data ----------------------


class ConsulFreshness:
    """How fresh one plugin's Consul data is, reported the same way by every Consul plugin.

    Each endpoint a plugin reads is ``ok`` or failing. ``last_success`` moves when
    every endpoint is ok. Metrics (all with ``site`` and ``plugin`` labels):
    ``tgw_consul_errors_total{endpoint,kind}`` per failure and
    ``tgw_consul_staleness_seconds``, 0 while everything is fresh and otherwise the
    seconds since the data was last known good. A failure is logged when an endpoint
    starts failing (a 403 once per endpoint and process, naming the permission it
    needs) and when it recovers, never once per retry.
    """

    def __init__(self, site: Any, plugin: str) -> None:
        from prometheus_client import Counter, Gauge

        self._site = site
        self._plugin = plugin
        self._clock = site.reactor
        self.last_success: float | None = None
        self._failing: dict[str, str] = {}
        self._acl_reported: set[str] = set()
        self._started = self._clock.seconds()
        errors = site.metrics.family(
            Counter,
            "tgw_consul_errors",
            "Failed Consul requests, by plugin, endpoint and kind (http_500, acl_denied, "
            "timeout, unreachable, invalid). The last good data stays in force.",
            ["site", "plugin", "endpoint", "kind"],
        )
        self._errors = errors
        staleness = site.metrics.family(
            Gauge,
            "tgw_consul_staleness_seconds",
            "0 while a Consul plugin's data is fresh; otherwise seconds since it was last "
            "known good (since start when it never was).",
            ["site", "plugin"],
        )
        staleness.labels(site=site.name, plugin=plugin).set_function(self.staleness)

    def staleness(self) -> float:
        if not self._failing and self.last_success is not None:
            return 0.0
        since = self.last_success if self.last_success is not None else self._started
        return max(0.0, self._clock.seconds() - since)

    @property
    def error(self) -> str | None:
        return "; ".join(self._failing.values()) or None

    def ok(self, endpoint: str) -> None:
        if self._failing.pop(endpoint, None) is not None:
            self._site.log.info(
                "{plugin}: Consul {endpoint} answers again", plugin=self._plugin, endpoint=endpoint
            )
        if not self._failing:
            self.last_success = self._clock.seconds()

    def failed(self, error: ConsulError) -> None:
        self._errors.labels(
            site=self._site.name, plugin=self._plugin, endpoint=error.endpoint, kind=error.kind
        ).inc()
        first = error.endpoint not in self._failing
        self._failing[error.endpoint] = str(error)
        if error.kind == "acl_denied":
            if error.endpoint in self._acl_reported:
                return
            self._acl_reported.add(error.endpoint)
            self._site.log.error(
                "{plugin}: Consul refused {endpoint} (403): the token needs {permission}; "
                "the last good data stays in force",
                plugin=self._plugin,
                endpoint=error.endpoint,
                permission=PERMISSIONS.get(error.endpoint, "more permissions"),
            )
        elif first:
            self._site.log.warn(
                "{plugin}: Consul {endpoint} failed ({error}); retrying with back-off, "
                "the last good data stays in force",
                plugin=self._plugin,
                endpoint=error.endpoint,
                error=str(error),
            )


def connection_problems(reader: SectionReader, settings: ConsulSettings) -> None:
    """Add a problem to ``reader`` for every connection file that cannot be read."""
    for key, message in check_files(settings):
        reader.problem(key, message)
