"""The HTTP client of a Consul agent: bounded sockets, bounded bodies, the ACL token
re-read from its file, TLS to the agent, and one shared client per agent and settings.

Every request of a :class:`ConsulClient` waits for one of ``max_connections`` slots, and
finished connections are kept (up to the same number) for reuse, so a client never holds
more than ``max_connections`` sockets whatever the number of watches. Plugins of one
process that name the same agent with the same settings share one client
(:func:`acquire_client`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gwcore.net.consul_settings import MAX_BODY, TOKEN_HEADER, ConsulError, ConsulResponse

if TYPE_CHECKING:
    from gwcore.net.consul_settings import ConsulSettings


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
