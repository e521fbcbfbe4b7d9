"""The framing-neutral L7 exchange core: what codecs call and what upstream clients provide.

A connection whose destination's protocol is HTTP-like (``policy.http_facts.is_l7``)
is not spliced: after its TLS handshake and identity check it becomes an HTTP
*session* (:mod:`gwcore.net.l7_session`). The session owns a **downstream codec**
(HTTP/1.1 with h11 in :mod:`gwcore.net.http1_server`; HTTP/2 plugs in the same way)
that turns client bytes into requests. For every request the codec starts one
**exchange** and talks to it only through the interfaces below; the exchange
(:mod:`gwcore.runtime.l7_exchange`) runs the per-request steps (limits → path
normalisation → authorization → addons → upstream → response → record) and talks to
an **upstream client** (HTTP/1.1 pool in :mod:`gwcore.net.http_pool`; HTTP/2 the
same way) only through the interfaces below. No HTTP framing crosses these lines:
heads are :class:`~gwcore.contract.http_flow.HttpRequest` /
:class:`~gwcore.contract.http_flow.HttpResponse`, bodies are ``bytes`` chunks,
trailers are :class:`~gwcore.contract.http_flow.Headers`.

The life of one request, and who calls whom::

    codec ── start(conn, request, writer) ──▶ ExchangeStarter      → Exchange
    codec ── request_data / request_end / client_gone ──▶ Exchange
    Exchange ── open(request, sink, owner) ──▶ UpstreamClient           → UpstreamStream
    Exchange ── send_data / send_end / cancel ──▶ UpstreamStream
    upstream ── response_head / response_data / response_end / response_failed ──▶ sink
    Exchange ── write_head / write_data / write_end / abort ──▶ ResponseWriter (codec)

Codec choice: the session builds the codec named by the ALPN protocol the handshake
agreed to (``h2`` → HTTP/2), else by the client's first bytes (the HTTP/2 connection
preface → HTTP/2 for http2/grpc destinations), else HTTP/1.1; a codec is a class
``codec_class(link, starter, limits)`` implementing :class:`DownstreamCodec`
(``gwcore.net.l7_session.CODECS`` maps ``"HTTP/1.1"``/``"HTTP/2"`` to classes).

Rules both sides keep:

- **Order.** A codec calls ``request_data`` zero or more times, then ``request_end``
  exactly once, or ``client_gone`` at any time (after which it calls nothing more).
  An exchange calls ``write_head`` once (a 1xx interim response is not written
  through it: the codec answers ``Expect: 100-continue`` itself when the first
  ``request_data`` is wanted), then ``write_data`` zero or more times, then
  ``write_end`` once; or ``abort`` at any time. After ``write_end`` or ``abort`` it
  calls nothing more on that writer.
- **Flow control**, Twisted's producer vocabulary (``pauseProducing`` /
  ``resumeProducing``), both ways and per request:
  the exchange gives the codec the producer of response bytes
  (``writer.set_response_producer``): the codec pauses it while the client cannot
  take more (HTTP/1.1: the client transport's buffer; HTTP/2: the stream's window).
  The codec gives the exchange the producer of request bytes
  (``Exchange.request_producer``), which the exchange hands to the upstream stream
  (``UpstreamStream.set_request_producer``): the upstream pauses it while the service
  cannot take more. Nothing in between buffers without bound.
- **Errors.** An upstream client never raises at the exchange: a failure is
  ``sink.response_failed(UpstreamFailure)``, whose ``status`` is what the client gets
  when no response head was written yet (502 unreachable/reset, 503 pool exhausted,
  504 timeout). After a head was written the exchange can only ``abort``.
- **Reuse.** An upstream connection carries another request only after a complete
  response the connection may be kept for; the downstream codec reads the next
  request only after the previous one's exchange wrote its end (HTTP/1.1) or as its
  stream concurrency allows (HTTP/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gwcore.contract.http_flow import Headers, HttpRequest, HttpResponse
    from gwcore.policy.model import Endpoint


class Producer(Protocol):
    """Twisted's push-producer pair: stop sending, start again."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """Why an upstream client could not (or no longer) deliver a response.

    ``reason`` is a bounded metric label: ``unavailable`` (no endpoint reachable),
    ``reset`` (the connection ended mid-exchange), ``timeout`` (the resolver's
    ``RequestTimeout``), ``overflow`` (pool and its queue full), ``protocol`` (the
    service spoke bad HTTP), ``cancelled`` (the client left).
    """

    reason: str
    detail: str
    status: int = 502
    """The status the client gets if no response head was written yet."""
    endpoint: Endpoint | None = None


class ResponseWriter(Protocol):
    """What a downstream codec gives an exchange: the way back to the client for one request."""

    def write_head(self, response: HttpResponse) -> None:
        """Send the response status and headers (hop-by-hop fields already removed)."""

    def write_data(self, data: bytes) -> None:
        """Send a piece of the response body."""

    def write_end(self, trailers: Headers | None = None) -> None:
        """End the response (with trailers when the client's protocol carries them)."""

    def abort(self, reason: str) -> None:
        """The response cannot be completed: HTTP/1.1 closes the connection, HTTP/2
        resets the stream. ``reason`` is for the log."""

    def set_response_producer(self, producer: Producer | None) -> None:
        """Who to pause while the client cannot take more response bytes."""


class Exchange(Protocol):
    """What a downstream codec calls for one request (built by an :class:`ExchangeStarter`)."""

    request_producer: Producer | None
    """Set by the codec before the first ``request_data``: pauses reading the body."""

    def request_data(self, data: bytes) -> None:
        """A piece of the request body, in order."""

    def request_end(self, trailers: Headers | None = None) -> None:
        """The request body is complete (trailers when the client sent any)."""

    def client_gone(self, reason: str) -> None:
        """The client connection (or HTTP/2 stream) ended before the exchange did."""


class ExchangeStarter(Protocol):
    """The per-connection entry point a codec is built with (the site's L7 core)."""

    def start(self, request: HttpRequest, writer: ResponseWriter) -> Exchange:
        """A request head arrived (``request.path`` is the target exactly as sent: the
        exchange normalises it). The exchange may answer at once through ``writer``
        (400, 403, an addon's answer) before any body is read."""


class ResponseSink(Protocol):
    """What an upstream stream calls as the response arrives (the exchange)."""

    def response_head(self, response: HttpResponse) -> None: ...

    def response_data(self, data: bytes) -> None: ...

    def response_end(self, trailers: Headers | None = None) -> None: ...

    def response_failed(self, failure: UpstreamFailure) -> None: ...


class UpstreamStream(Protocol):
    """One request in flight on an upstream connection."""

    endpoint: Endpoint | None
    """The endpoint serving it (the access log's ``upstream_host``)."""

    def send_data(self, data: bytes) -> None: ...

    def send_end(self, trailers: Headers | None = None) -> None: ...

    def set_request_producer(self, producer: Producer | None) -> None:
        """Who to pause while the service cannot take more request bytes."""

    def pauseProducing(self) -> None:
        """Stop reading the response (the client is slow)."""

    def resumeProducing(self) -> None: ...

    def cancel(self, reason: str) -> None:
        """The client left: drop the stream (its connection is not reused)."""


class UpstreamClient(Protocol):
    """Carries requests to one destination's endpoints (a bounded pool of connections)."""

    def open(self, request: HttpRequest, sink: ResponseSink, owner: Any) -> UpstreamStream:
        """Start ``request`` (head only; the body follows through the stream). Failures
        arrive later at ``sink.response_failed``, never as an exception or a call from
        inside ``open``. ``owner`` is the client connection that asked (the dial step
        hashes and logs by it). ``request.headers`` carry ``content-length`` when the
        body's length is known, and ``transfer-encoding: chunked`` when a body of
        unknown length follows (the HTTP/1.1 client frames it so; HTTP/2 drops it)."""

    def close(self) -> None:
        """Close idle connections and refuse new requests (site stop, route removed)."""


class ClientLink(Protocol):
    """What the session gives a downstream codec: the decrypted client connection."""

    def write(self, data: bytes) -> None:
        """Plaintext to the client (encrypted by the session's TLS)."""

    def pause_reading(self) -> None:
        """Stop delivering client bytes (HTTP/1.1: a request is in flight)."""

    def resume_reading(self) -> None: ...

    def close(self, cause: str) -> None:
        """Flush what was written, end TLS, close. ``cause`` is the close cause."""

    def bad_request(self, reason: str, detail: str) -> None:
        """Count a malformed request (``tgw_http_bad_requests_total{reason}``) and log
        one line; the codec then answers 400 (or resets the stream) itself."""


class DownstreamCodec(Protocol):
    """One client connection's HTTP framing (HTTP/1.1 or HTTP/2), built by the session as
    ``codec_class(link: ClientLink, starter: ExchangeStarter, limits: L7Limits)``."""

    def data_received(self, data: bytes) -> None:
        """Decrypted client bytes, in order."""

    def eof_received(self) -> None:
        """The client finished writing (close_notify or FIN)."""

    def connection_lost(self) -> None:
        """The client connection is gone: every open exchange gets ``client_gone``."""

    def set_client_writable(self, writable: bool) -> None:
        """The client transport's buffer is full (False) or drained again (True)."""

    def drain(self) -> None:
        """The site stops (or a reload replaced it): finish the requests in flight, take
        no new ones, then close (HTTP/1.1: ``Connection: close`` on the last response,
        at once when idle; HTTP/2: GOAWAY). Optional: a codec without it is closed at
        the end of ``drain_timeout``."""


@dataclass(frozen=True, slots=True)
class L7Limits:
    """The site's per-connection HTTP limits (site keys, ``docs/l7.md``)."""

    max_request_headers_kb: int = 60
    """Largest request head (request line and header fields) in KiB; more is refused."""
    request_head_timeout: float = 0.0
    """Seconds a client has for a complete request head (``http1_head_timer``; HTTP/2:
    a complete header block, ``h2_head_timer``)."""
    clock: Any = None
    """What schedules that timeout (the site's reactor)."""
