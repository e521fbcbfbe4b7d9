"""One HTTP/2 request at an L7 destination: decide, then relay it to the service.

An :class:`H2Exchange` is the :class:`~gwcore.net.h2_link.StreamPeer` of one
downstream stream. Its life::

    HEAD ──refused──▶ RST_STREAM (PROTOCOL_ERROR), counted
      │
      ▼
    DECIDING ──deny──▶ 403 "RBAC: access denied"   (gRPC: trailers-only, grpc-status 7)
      │ allow
      ▼
    OPENING ──no stream──▶ 503 (gRPC: grpc-status 14, UNAVAILABLE)
      │
      ▼
    RELAYING ──▶ DONE (either side ended both ways, or a reset)

- DECIDING / OPENING: the request body that arrives is held, unacknowledged, so the
  client's window bounds it; it is sent first once the upstream stream exists.
- RELAYING: :class:`_Relay` passes heads, DATA, trailers and resets both ways; DATA
  is acknowledged to its sender only once the other side sent it (flow control).
- A denied or answered request whose body is still arriving is reset with
  NO_ERROR after the answer (RFC 9113 §8.1), and its DATA acknowledged as it comes.

The decision is the core's: ``decide(facts)`` returns (or a Deferred of) a
:class:`~gwcore.policy.model.Decision`; ``upstream_head(facts)`` builds the head the
service receives (normalised path, ``:authority`` kept, XFCC ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from h2.errors import ErrorCodes
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from gwcore.net.h2_link import H2Stream, HeaderList
from gwcore.net.h2_upstream import H2Pool
from gwcore.policy import http2_rules
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Decision, Verdict

GRPC_UNAVAILABLE = 14


@dataclass
class H2Outcome:
    """What the core records of one HTTP/2 exchange (access log, metrics)."""

    facts: HttpRequestFacts | None
    decision: Decision | None = None
    status: int = 0
    grpc_status: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    error: str | None = None
    """Why the exchange failed (a counted reason), or None."""


def default_upstream_head(facts: HttpRequestFacts, head: HeaderList) -> HeaderList:
    """The client's head with the normalised path: ``:authority`` and the rest kept."""
    path = facts.path.encode("latin-1")
    return [(k, path) if k == b":path" else (k, v) for k, v in head]


class H2Exchange:
    """The downstream peer of one HTTP/2 request (module docstring)."""

    log = Logger()

    def __init__(
        self,
        stream: H2Stream,
        head: HeaderList,
        *,
        decide: Callable[[HttpRequestFacts], Any],
        pool: H2Pool,
        upstream_head: Callable[[HttpRequestFacts, HeaderList], HeaderList] = default_upstream_head,
        on_done: Callable[[H2Outcome], None] | None = None,
        normalize: Callable[[HttpRequestFacts], HttpRequestFacts | str] | None = None,
    ) -> None:
        self.down = stream
        self.head = head
        self.pool = pool
        self.grpc = http2_rules.is_grpc(head)
        self._on_done = on_done
        self._upstream_head = upstream_head
        self._held: list[tuple[bytes, int]] = []
        self._held_trailers: HeaderList | None = None
        self._client_ended = False
        self._relay: _Relay | None = None
        self._answered = False
        self.done = False
        facts = http2_rules.request_facts(head)
        if isinstance(facts, HttpRequestFacts) and normalize is not None:
            facts = normalize(facts)
        if isinstance(facts, str):
            self.outcome = H2Outcome(None, error=facts)
            self.log.info("HTTP/2 request refused: {reason}", reason=facts)
            self._finish_reset(ErrorCodes.PROTOCOL_ERROR)
            return
        self.outcome = H2Outcome(facts)
        maybeDeferred(decide, facts).addCallbacks(self._decided, self._decision_failed)

    # --- deciding -----------------------------------------------------------------

    def _decided(self, decision: Decision) -> None:
        self.outcome.decision = decision
        if self.done:
            return
        if decision.verdict is not Verdict.ALLOW:
            self._deny()
            return
        assert self.outcome.facts is not None
        head = self._upstream_head(self.outcome.facts, self.head)
        relay = self._relay = _Relay(self)
        end = self._client_ended and not self._held and self._held_trailers is None
        self.pool.open_stream(head, relay.up_peer, end).addCallbacks(
            relay.opened, self._no_upstream
        )

    def _decision_failed(self, failure: Any) -> None:
        self.log.info("HTTP/2 decision failed: {error}", error=failure.getErrorMessage())
        self.outcome.decision = None
        self._deny()

    def _deny(self) -> None:
        self.outcome.error = "denied"
        if self.grpc:
            self.outcome.status, self.outcome.grpc_status = 200, "7"
            self._answer(http2_rules.grpc_denial(), b"")
        else:
            body = http2_rules.DENIAL_MESSAGE.encode()
            self.outcome.status = 403
            self._answer(http2_rules.http_denial(len(body)), body)

    def _no_upstream(self, failure: Any) -> None:
        if self.done:
            return
        self.outcome.error = "upstream_unavailable"
        self.log.info("HTTP/2 upstream unavailable: {error}", error=failure.getErrorMessage())
        if self.grpc:
            self.outcome.status, self.outcome.grpc_status = 200, str(GRPC_UNAVAILABLE)
            head = http2_rules.grpc_denial("upstream unavailable")
            head[2] = (b"grpc-status", str(GRPC_UNAVAILABLE).encode())
            self._answer(head, b"")
        else:
            body = b"no healthy upstream"
            self.outcome.status = 503
            self._answer([(b":status", b"503"), (b"content-length", str(len(body)).encode())], body)

    def _answer(self, head: HeaderList, body: bytes) -> None:
        """Answer the request ourselves; the rest of its body is read and dropped."""
        self._answered = True
        for _, flow in self._held:
            self.down.ack(flow)
        self._held.clear()
        self.down.send_headers(head, end=not body)
        if body:
            self.down.send_data(body)
            self.down.end()
        if self._client_ended:
            self._finish()
        else:
            self._finish_reset(ErrorCodes.NO_ERROR)

    # --- events from the client (StreamPeer) -----------------------------------------

    def headers_received(self, headers: HeaderList) -> None:  # pragma: no cover - server side
        pass

    def data_received(self, data: bytes, flow_length: int) -> None:
        self.outcome.bytes_in += len(data)
        if self._relay is not None and self._relay.up is not None:
            self._relay.to_upstream(data, flow_length)
        elif self._answered or self.done:
            self.down.ack(flow_length)
        else:
            self._held.append((data, flow_length))

    def trailers_received(self, headers: HeaderList) -> None:
        if self._relay is not None and self._relay.up is not None:
            self._relay.up.send_trailers(headers)
        else:
            self._held_trailers = headers

    def end_received(self) -> None:
        self._client_ended = True
        if self._relay is not None and self._relay.up is not None:
            if self._held_trailers is None:
                self._relay.up.end()
        elif self._answered and not self.done:
            self._finish()
        if self._relay is not None:
            self._relay.maybe_done()

    def reset_received(self, code: int) -> None:
        """The client cancelled (or its connection went): cancel the upstream stream."""
        if self.done:
            return
        self.outcome.error = self.outcome.error or "client_reset"
        if self._relay is not None:
            if self._relay.up is not None:
                self._relay.up.reset(ErrorCodes.CANCEL)
            else:
                self.pool.cancel(self._relay.up_peer)
        self._finish()

    # --- the end ------------------------------------------------------------------

    def flush_held(self) -> None:
        relay = self._relay
        assert relay is not None and relay.up is not None
        held, self._held = self._held, []
        for data, flow in held:
            relay.to_upstream(data, flow)
        if self._held_trailers is not None:
            relay.up.send_trailers(self._held_trailers)
        elif self._client_ended:
            relay.up.end()

    def _finish_reset(self, code: int) -> None:
        self.down.reset(code)
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self._on_done is not None:
            self._on_done(self.outcome)


class _Relay:
    """Passes one request's stream to its upstream stream and the response back."""

    def __init__(self, exchange: H2Exchange) -> None:
        self.exchange = exchange
        self.up: H2Stream | None = None
        self.up_peer = _UpstreamPeer(self)
        self.response_ended = False

    def opened(self, stream: H2Stream) -> None:
        if self.exchange.done:  # the client went away while we waited for a stream
            stream.reset(ErrorCodes.CANCEL)
            return
        self.up = stream
        self.exchange.flush_held()

    def to_upstream(self, data: bytes, flow_length: int) -> None:
        assert self.up is not None
        down = self.exchange.down
        self.up.send_data(data, lambda: down.ack(flow_length))

    def maybe_done(self) -> None:
        if self.response_ended and self.exchange._client_ended:
            self.exchange._finish()


class _UpstreamPeer:
    """The events of the upstream stream, passed to the client's stream."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def headers_received(self, headers: HeaderList) -> None:
        outcome = self.relay.exchange.outcome
        for name, value in headers:
            if name == b":status":
                outcome.status = int(value)
            elif name == b"grpc-status":  # trailers-only response
                outcome.grpc_status = value.decode("latin-1")
        self.relay.exchange.down.send_headers(headers)

    def data_received(self, data: bytes, flow_length: int) -> None:
        up = self.relay.up
        self.relay.exchange.outcome.bytes_out += len(data)
        if up is None:
            return
        self.relay.exchange.down.send_data(data, lambda: up.ack(flow_length))

    def trailers_received(self, headers: HeaderList) -> None:
        for name, value in headers:
            if name == b"grpc-status":
                self.relay.exchange.outcome.grpc_status = value.decode("latin-1")
        self.relay.exchange.down.send_trailers(headers)

    def end_received(self) -> None:
        self.relay.exchange.down.end()  # no-op after trailers
        self.relay.response_ended = True
        self.relay.maybe_done()

    def reset_received(self, code: int) -> None:
        exchange = self.relay.exchange
        if exchange.done:
            return
        exchange.outcome.error = exchange.outcome.error or "upstream_reset"
        exchange._finish_reset(
            ErrorCodes.REFUSED_STREAM if code == ErrorCodes.REFUSED_STREAM else ErrorCodes.CANCEL
        )
