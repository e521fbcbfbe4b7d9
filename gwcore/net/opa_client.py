"""A client for an OPA server's REST data API: ``POST /v1/data/<path>`` with ``{"input": ...}``.

Rules, all enforced here so the engine only ever sees an :class:`Evaluation`:

- **One budget per evaluation.** ``timeout`` covers waiting for a connection slot,
  connecting, every attempt and reading the answer; when it runs out the request is
  cancelled (its connection aborted) and the result is a ``timeout`` error.
- **Bounded.** At most ``max_connections`` requests are in flight (the rest wait,
  inside the budget); the pool keeps at most that many idle connections; an
  answer larger than ``max_response_bytes`` is an error, never buffered.
- **Retries only where safe.** Evaluating a rule has no side effects, so a request
  may be repeated; it is repeated (up to ``retries`` times, inside the budget) only
  when repeating can help: the connection failed or was lost before an answer, or
  OPA answered 502/503/504. A 500 (an evaluation error) or a 4xx would repeat the
  same way and is returned at once; a timeout has used the budget.
- **Never fails.** Transport problems come back as ``Evaluation.error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from gwcore.policy.opa_input import (
    Evaluation,
    data_api_body,
    data_api_path,
    read_data_api_response,
)

MAX_RESPONSE_BYTES = 1 << 20
RETRY_STATUSES = frozenset({502, 503, 504})
_RETRYABLE = (
    net_error.ConnectError,  # refused, unreachable, DNS: nothing was sent
    ResponseNeverReceived,  # e.g. a pooled connection OPA had closed
    RequestTransmissionFailed,
    RequestNotSent,
    ResponseFailed,  # lost before a complete answer
)


class ResponseTooLargeError(Exception):
    """OPA's answer exceeded the configured bound."""


@implementer(IBodyProducer)
class _BytesBody:
    """A request body that is already in memory (written at once, length known)."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    # The whole body was written in startProducing: there is nothing to pause,
    # resume or stop.
    def pauseProducing(self) -> None:
        return None

    def resumeProducing(self) -> None:
        return None

    def stopProducing(self) -> None:
        return None


class _BoundedBody(Protocol):
    """Collects a response body, failing (and aborting) past ``limit`` bytes."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def dataReceived(self, data: bytes) -> None:
        if self._too_large:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._too_large = True
            self._chunks.clear()
            self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._finished.called:  # cancelled (the budget ran out)
            return
        if self._too_large:
            self._finished.errback(
                ResponseTooLargeError(f"OPA's answer is larger than {self._limit} bytes")
            )
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(reason)


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        response.deliverBody(_Discard())
        raise ResponseTooLargeError(f"OPA's answer is larger than {limit} bytes")
    protocol: _BoundedBody

    def abort(_: Deferred[bytes]) -> None:
        if protocol.transport is not None:
            protocol.transport.stopProducing()

    finished: Deferred[bytes] = Deferred(abort)
    protocol = _BoundedBody(finished, limit)
    response.deliverBody(protocol)
    return finished


class _Discard(Protocol):
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()


class OpaClient:
    """Evaluates rules on one OPA server (``base_url`` such as ``http://127.0.0.1:8181``)."""

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        *,
        timeout: float,
        max_connections: int,
        retries: int,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._reactor = reactor
        self._base = base_url.rstrip("/").encode()
        self._timeout = timeout
        self._retries = retries
        self._max_bytes = max_response_bytes
        self._slots = DeferredSemaphore(max_connections)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_connections
        self._pool.retryAutomatically = False  # our retry rules, not the pool's
        self._agent = Agent(reactor, connectTimeout=timeout, pool=self._pool)
        self.in_flight = 0

    def evaluate(self, path: str, input_document: Mapping[str, Any]) -> Deferred[Evaluation]:
        """The value of ``data.<path>`` for ``input_document``; never fails (see module doc)."""
        body = data_api_body(input_document)
        url = self._base + data_api_path(path).encode()
        d = Deferred.fromCoroutine(self._evaluate(path, url, body))
        timeout = self._timeout

        def timed_out(result: Any, _: float) -> Evaluation:
            return Evaluation.error("timeout", f"OPA did not answer within {timeout:g}s")

        return d.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)

    async def _evaluate(self, path: str, url: bytes, body: bytes) -> Evaluation:
        await self._slots.acquire()  # outside the try: a cancelled wait holds no slot
        self.in_flight += 1
        try:
            attempt = 0
            while True:
                attempt += 1
                may_retry = attempt <= self._retries
                try:
                    status, payload = await self._post(url, body)
                except ResponseTooLargeError as e:
                    return Evaluation.error("bad_response", str(e))
                except _RETRYABLE as e:
                    if _cancelled(e):  # the budget ran out: Twisted wraps our cancel
                        raise CancelledError() from e
                    if may_retry:
                        continue
                    return Evaluation.error(
                        "unavailable", f"OPA unreachable: {_describe(e)} (attempts: {attempt})"
                    )
                except CancelledError:
                    raise
                except Exception as e:
                    return Evaluation.error("unavailable", f"asking OPA failed: {_describe(e)}")
                if status in RETRY_STATUSES and may_retry:
                    continue
                return read_data_api_response(path, status, payload)
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _post(self, url: bytes, body: bytes) -> tuple[int, bytes]:
        headers = Headers(
            {b"Content-Type": [b"application/json"], b"Accept": [b"application/json"]}
        )
        response = await self._agent.request(b"POST", url, headers, _BytesBody(body))
        payload = await _read_body(response, self._max_bytes)
        return response.code, payload

    def close(self) -> Deferred[None]:
        """Close idle pooled connections (call when the engine stops)."""
        return self._pool.closeCachedConnections()


def _cancelled(e: BaseException) -> bool:
    return any(f.check(CancelledError) for f in getattr(e, "reasons", None) or ())


def _describe(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)  # the _newclient errors wrap a list of Failures
    if reasons:
        inner = reasons[0].value
        return f"{type(inner).__name__}: {inner}"
    return f"{type(e).__name__}: {e}"
