"""The HTTP/1.1 downstream codec: one client connection's requests, with h11.

Rules (:mod:`gwcore.net.l7_core` has the contract with the exchange):

- One request at a time. h11 answers ``PAUSED`` once a request is complete, its
  response is not, and bytes of a next request wait in its buffer; the codec then
  stops reading the client, so pipelined requests wait in the socket (and at most one
  TCP read in h11's buffer) and are answered in order, each after the previous
  response ended. A client that sends nothing more while its response is on the way
  is not paused and resumed around every request (two ``epoll_ctl`` calls each).
- A request's body is read only once its exchange asks for it (``resumeProducing``
  on the codec, after authorization): a denied request's body never goes upstream.
  ``Expect: 100-continue`` is answered ``100 Continue`` at that moment. Until then
  the client is paused as soon as a read leaves bytes h11 holds for later. While
  the exchange has the body paused (the service is slow), the client is not read.
- Bad HTTP (h11's ``RemoteProtocolError``: invalid framing, a head over
  ``max_request_headers_kb``; and ``Content-Length`` with ``Transfer-Encoding``,
  which h11 tolerates and RFC 9112 §6.1 lets a server refuse) is counted by reason,
  answered 400 (431 for an oversize head) with ``Connection: close``, and the
  connection closes. Nothing of such a request reaches an exchange.
- A response that cannot be completed (the service reset) closes the connection:
  HTTP/1.1 has no other way to say the body is truncated.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import h11
from twisted.logger import Logger

from gwcore.contract.http_flow import Headers, HttpRequest
from gwcore.net.h11_trusted import ValidFields, known_valid, response_event
from gwcore.net.http1_head_timer import HeadTimer
from gwcore.net.http_wire import ambiguous_framing, text_fields
from gwcore.net.http_wire import latin1_fields as _wire
from gwcore.net.l7_upgrade import switch_client
from gwcore.policy.http_method import BAD_METHOD, miscased_method

if TYPE_CHECKING:
    from gwcore.contract.http_flow import HttpResponse
    from gwcore.net.l7_core import ClientLink, Exchange, ExchangeStarter, L7Limits, Producer

log = Logger(namespace="tgw.http")

_BAD_REASONS = (
    ("Content-Length", "bad_content_length"),
    ("Transfer-Encoding", "bad_transfer_encoding"),
    ("chunk", "bad_chunk"),
    ("header", "bad_header"),
    ("request line", "bad_request_line"),
    ("HTTP version", "bad_version"),
)


def bad_reason(error: h11.RemoteProtocolError) -> str:
    """A bounded metric label for h11's complaint."""
    if error.error_status_hint == 431:
        return "headers_too_large"
    text = str(error)
    for needle, reason in _BAD_REASONS:
        if needle.lower() in text.lower():
            return reason
    return "bad_framing"


_PHRASES = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}

_END = h11.EndOfMessage()
"""The end of a message without trailers (h11's events are immutable: one will do)."""


def _phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"")


def _text(value: bytes) -> str:
    return value.decode("latin-1")


class Http1Server:
    """One client connection's HTTP/1.1 framing; see the module docstring."""

    protocol = "HTTP/1.1"

    def __init__(self, link: ClientLink, starter: ExchangeStarter, limits: L7Limits) -> None:
        self.link = link
        self.starter = starter
        self.max_head = limits.max_request_headers_kb * 1024
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        self.exchange: Exchange | None = None
        """The exchange whose request is being read (None once its body is complete)."""
        self.answering: _Answer | None = None
        """The writer of the response in progress (one at a time)."""
        self.body_wanted = False
        self.body_paused = False  # the exchange paused the body (its service is slow)
        self.closed = False
        self.client_writable = True
        self.response_producer: Producer | None = None
        self.reading = True
        self.draining = False
        self.stopping = False  # drain(): the response in flight is the last one
        self.head_timer = HeadTimer(limits.clock, limits.request_head_timeout, self._head_late)
        self.head_timer.arm()

    # --- DownstreamCodec -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.head_timer.data()
        self.h11.receive_data(data)
        self._drain()
        if not self.reading and not self.closed:
            # The splice resumes the client once when it starts; a paused codec says so
            # again at every read, so at most one read waits in h11's buffer.
            self.link.pause_reading()

    def eof_received(self) -> None:
        if self.closed:
            return
        try:
            self.h11.receive_data(b"")
        except RuntimeError:  # h11 already saw the end
            return
        self._drain()

    def connection_lost(self) -> None:
        self.closed = True
        self.head_timer.stop()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone("client connection lost")
        answering, self.answering = self.answering, None
        if answering is not None and answering.exchange is not exchange:
            answering.exchange.client_gone("client connection lost")

    def set_client_writable(self, writable: bool) -> None:
        self.client_writable = writable
        producer = self.response_producer
        if producer is not None:
            if writable:
                producer.resumeProducing()
            else:
                producer.pauseProducing()

    def drain(self) -> None:
        self.stopping = True
        if not self.closed and self.answering is None and self.exchange is None:
            self.closed = True
            self.link.close("shutdown")

    # --- Producer of request bytes (given to the exchange) -------------------------

    def pauseProducing(self) -> None:
        self.body_wanted = False
        self.body_paused = True
        self._set_reading(False)

    def resumeProducing(self) -> None:
        if self.closed or self.exchange is None:
            return
        self.body_wanted = True
        self.body_paused = False
        if self.h11.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))
        self._drain()

    # --- reading -------------------------------------------------------------------

    def _set_reading(self, want: bool) -> None:
        if self.closed or want == self.reading:
            return
        self.reading = want
        if want:
            self.link.resume_reading()
        else:
            self.link.pause_reading()

    def _drain(self) -> None:
        if self.draining:
            return  # called back from inside the loop (an answer written at once)
        self.draining = True
        try:
            held = self._drain_events()
        finally:
            self.draining = False
        self._set_reading(not held)

    def _drain_events(self) -> bool:
        """Hand h11's events to the exchanges; True when the client must not be read
        now: bytes wait in h11's buffer for later (a body not asked for yet, the next
        request while this one's response is on its way) or the body is paused."""
        while not self.closed:
            if self.exchange is not None and not self.body_wanted:
                # Its exchange has not asked for the body (yet), or paused it.
                return self.body_paused or bool(self.h11.trailing_data[0])
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self._bad_request(bad_reason(e), str(e), e.error_status_hint)
                return True
            if event is h11.NEED_DATA:
                return False
            if event is h11.PAUSED:
                return True  # a next request came before this one's response ended
            if isinstance(event, h11.Request):
                self._request(event)
            elif isinstance(event, h11.Data):
                if self.exchange is not None:
                    self.exchange.request_data(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                exchange, self.exchange = self.exchange, None
                self.body_wanted = self.body_paused = False
                if exchange is not None:
                    raw = event.headers.raw_items()
                    exchange.request_end(Headers(text_fields(raw)) if raw else None)
                self._next_cycle()
                if self.answering is not None and not self.closed:
                    # Its response is on the way: h11 could only say PAUSED (a next
                    # request's bytes wait) or NEED_DATA; its buffer says as much.
                    return bool(self.h11.trailing_data[0])
            elif isinstance(event, h11.ConnectionClosed):
                if self.answering is None and self.exchange is None:
                    self.link.close("completed")
                    self.closed = True
                return False
        return True

    def _head_late(self) -> None:
        if self.closed or self.answering is not None or self.exchange is not None:
            return
        if self.h11.trailing_data[0]:
            # Part of a head came, the rest did not in time: a slow (or slowloris) client.
            self._bad_request("request_head_timeout", "no complete request head in time", 408)
        else:
            self.closed = True
            self.link.close("idle_timeout")

    def _request(self, event: h11.Request) -> None:
        self.head_timer.disarm()
        raw = event.headers.raw_items()
        # h11 bounds only a head that arrives in pieces; one that came whole is
        # measured here against the same limit.
        size = len(event.method) + len(event.target)
        authority = None
        for k, v in raw:
            size += len(k) + len(v) + 4
            if authority is None and k.lower() == b"host":
                authority = v
        if size > self.max_head:
            self._bad_request("headers_too_large", f"request head of {size} bytes", 431)
            return
        if ambiguous_framing(raw):
            self._bad_request(
                "content_length_with_transfer_encoding",
                "Content-Length together with Transfer-Encoding",
                400,
            )
            return
        method = _text(event.method)
        if miscased_method(method):
            self._bad_request(BAD_METHOD, f"method {method!r} (case)", 400)
            return
        headers = ValidFields.adopt(text_fields(raw))  # h11 checked them as they came
        request = HttpRequest(
            method=method,
            path=_text(event.target),
            authority=_text(authority) if authority is not None else "",
            scheme="https",
            http_version="HTTP/1.1" if event.http_version == b"1.1" else "HTTP/1.0",
            headers=headers,
        )
        self.body_wanted = self.body_paused = False
        answer = self.answering = _Answer(self, request.method)
        exchange = answer.exchange = self.starter.start(request, answer)
        if answer.finished:
            return  # answered at once (403, an addon's answer): the body is dropped
        # h11 always reports the end of a request (even one without a body) as an
        # event of its own: the exchange gets it after it asked for the body.
        self.exchange = exchange
        exchange.request_producer = self

    def _next_cycle(self) -> None:
        """Start reading the next request once the previous exchange is fully done."""
        ours, theirs = self.h11.our_state, self.h11.their_state
        if ours is h11.DONE and theirs is h11.DONE:
            self.h11.start_next_cycle()
            self.head_timer.arm(started=bool(self.h11.trailing_data[0]))
        elif (
            self.answering is None
            and self.exchange is None
            and ({ours, theirs} & {h11.MUST_CLOSE, h11.CLOSED})
        ):
            self.closed = True
            self.link.close("completed")

    # --- writing -------------------------------------------------------------------

    def _send(self, event: object) -> bool:
        """Write ``event``; a response h11 refuses (an addon's header with a line break,
        more body than its Content-Length) ends the connection, not the process."""
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as e:
            self.refuse_response(str(e))
            return False
        if data:
            self.link.write(data)
        return True

    def refuse_response(self, error: str) -> None:
        log.warn("cannot send the response: {error}", error=error)
        if not self.closed:
            self.closed = True
            self.link.close("bad_response")

    def _bad_request(self, reason: str, detail: str, status: int) -> None:
        self.link.bad_request(reason, detail)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone(f"bad request: {detail}")
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.answering is None:
            status = status if status in (408, 431) else 400
            body = f"{_phrase(status).decode()}\n".encode()
            head = [
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
            if self._send(h11.Response(status_code=status, headers=head)):
                self._send(h11.Data(data=body))
                self._send(_END)
        self.closed = True
        self.link.close("bad_request")


class _Answer:
    """The :class:`~gwcore.net.l7_core.ResponseWriter` of one request."""

    __slots__ = ("codec", "exchange", "finished", "method", "trailers_ok", "unsent_body")

    def __init__(self, codec: Http1Server, method: str = "GET") -> None:
        self.codec = codec
        self.exchange: Exchange = None  # type: ignore[assignment]  # set right after start
        self.finished = False
        self.method = method
        self.trailers_ok = False  # only a chunked response carries trailers
        self.unsent_body = False  # answered while the client waited for 100 Continue

    def write_head(self, response: HttpResponse) -> None:
        codec = self.codec
        if codec.closed or self.finished:
            return
        try:  # h11 checks names and values as it builds the event
            headers = _wire(response.headers)
            if codec.stopping:
                headers.append((b"connection", b"close"))  # the last response (drain)
            elif (
                codec.h11.their_state is not h11.DONE
                and codec.h11.they_are_waiting_for_100_continue
            ):
                # Answered before the body was asked for: the client may still send it,
                # or may never; only a close keeps the framing certain. (h11 forgets the
                # wait once a response goes out: remembered for write_end.)
                headers.append((b"connection", b"close"))
                self.unsent_body = True
            self.trailers_ok = (
                codec.h11.their_http_version == b"1.1"
                and response.status not in (204, 304)
                and self.method != "HEAD"
                and b"content-length" not in {k.lower() for k, _ in headers}
            )
            # Not checked again if known valid (gwcore.net.h11_trusted; the appended
            # ``connection: close`` is a constant).
            head = response_event(
                response.status, headers, _phrase(response.status), known_valid(response.headers)
            )
        except (h11.LocalProtocolError, UnicodeError) as e:
            codec.refuse_response(str(e))
            return
        codec._send(head)

    def write_data(self, data: bytes) -> None:
        codec = self.codec
        if codec.closed or self.finished or not data or self.method == "HEAD":
            # A response to HEAD has no body (RFC 9110 §9.3.2), whoever made it: a
            # local answer's body is dropped, its Content-Length kept.
            return
        codec._send(h11.Data(data=data))

    def write_end(self, trailers: Headers | None = None) -> None:
        codec = self.codec
        if codec.closed or self.finished:
            return
        self.finished = True
        codec.response_producer = None
        end = _END
        if trailers is not None and self.trailers_ok and len(trailers):
            try:
                end = h11.EndOfMessage(headers=_wire(trailers))
            except (h11.LocalProtocolError, UnicodeError) as e:
                codec.refuse_response(str(e))
                return
        if not codec._send(end):
            return
        if codec.answering is self:
            codec.answering = None
        if codec.h11.their_state is h11.SEND_BODY:
            # Answered before the whole request was read (a denial, an addon): read the
            # rest and drop it, so the connection stays usable.
            if self.unsent_body or codec.h11.they_are_waiting_for_100_continue:
                codec.exchange = None
                codec.closed = True
                codec.link.close("completed")
                return
            codec.exchange = _Discard()
            codec.body_wanted, codec.body_paused = True, False
        codec._next_cycle()
        if codec.closed:
            return
        data, eof = codec.h11.trailing_data
        if data or eof or codec.exchange is not None:
            codec._drain()
        else:
            codec._set_reading(True)  # nothing waits: h11 would only say NEED_DATA

    def abort(self, reason: str) -> None:
        codec = self.codec
        if codec.closed or self.finished:
            return
        self.finished = True
        if codec.h11.our_state is h11.SEND_RESPONSE:
            # Nothing written yet: a 502 says more than a closed connection.
            body = b"upstream connect error or disconnect/reset before headers\n"
            head = [("content-length", str(len(body))), ("connection", "close")]
            if codec._send(h11.Response(status_code=502, headers=head)):
                codec._send(h11.Data(data=body))
                codec._send(_END)
        codec.closed = True
        codec.link.close("upstream_reset")

    def set_response_producer(self, producer: Producer | None) -> None:
        codec = self.codec
        codec.response_producer = producer
        if producer is not None and not codec.client_writable:
            producer.pauseProducing()

    def switch_protocols(self, response: HttpResponse, end: Any, on_end: Any) -> bool:
        """Send a ``101`` and join the client to the service (``gwcore.net.l7_upgrade``)."""
        return switch_client(self, response, end, on_end)


class _Discard:
    """Stands for an exchange that already answered: the rest of its body is dropped."""

    request_producer: Producer | None = None

    def request_data(self, data: bytes) -> None:
        return None

    def request_end(self, trailers: Headers | None = None) -> None:
        return None

    def client_gone(self, reason: str) -> None:
        return None
