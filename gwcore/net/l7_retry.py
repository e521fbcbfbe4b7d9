"""When a request that met a stale kept-alive upstream connection may go again.

A pooled HTTP/1.1 connection the service closes at the moment a request is written
on it (its keep-alive timer fired) fails with no byte of response. Like Envoy's
``reset-before-request`` on a reused connection and HAProxy's ``retry-on
conn-failure empty-response``, the request is sent once more on a fresh connection,
but only when that cannot repeat an effect the service may already have applied:

- the connection had carried an earlier exchange (a fresh connection's failure is
  the dial step's business: connect retries and outlier ejection);
- no byte of the response had arrived;
- the request is *safe to repeat*: no byte of its body was sent yet, or its method
  is idempotent (RFC 9110 §9.2.2) and the body sent so far is still held here, at
  most :data:`REPLAY_LIMIT` bytes (a larger body is not held, so not retried);
- it was not retried already (once, never a loop).

A non-idempotent request (POST, PATCH, ...) whose body was sent is never retried:
it is answered 502 as before.
"""

from __future__ import annotations

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 §9.2.2: the safe methods, plus PUT and DELETE."""

REPLAY_LIMIT = 64 * 1024
"""Body bytes of an idempotent request held for a retry (per request in flight)."""


class ReplayBuffer:
    """The body bytes one request wrote on a reused connection, while a retry may need them."""

    __slots__ = ("chunks", "idempotent", "overflowed", "retried", "sent", "size")

    def __init__(self, method: str) -> None:
        self.idempotent = method.upper() in IDEMPOTENT_METHODS
        self.chunks: list[bytes] = []
        self.size = 0
        self.sent = 0  # body bytes written to the current connection
        self.overflowed = False
        self.retried = False

    def wrote(self, data: bytes) -> None:
        """``data`` of the body went out on the current connection."""
        self.sent += len(data)
        if not self.idempotent or self.overflowed or self.retried:
            return
        self.size += len(data)
        if self.size > REPLAY_LIMIT:
            # Too large to hold: forget it, and with it the chance of a retry.
            self.overflowed = True
            self.chunks = []
            return
        self.chunks.append(data)

    def answered(self) -> None:
        """A byte of the response arrived: no retry any more, the copy can go."""
        self.retried = True
        self.chunks = []

    def may_retry(self) -> bool:
        if self.retried:
            return False
        return self.sent == 0 or (self.idempotent and not self.overflowed)

    def take(self) -> list[bytes]:
        """For the retry: the body to send again (and no further retry)."""
        self.retried = True
        chunks, self.chunks = self.chunks, []
        self.sent = 0
        return chunks
