"""An HTTP/1.1 connection switched by ``101 Switching Protocols``: one opaque byte stream.

Which requests are upgraded is :mod:`gwcore.policy.http_upgrade` (WebSocket only, as
Consul's Envoy); the exchange forwards such a request like any other (authorized per
request, ``Connection: upgrade`` and ``Upgrade`` kept). When the service answers
``101``:

1. **Upstream** (:func:`switch_upstream`, called by the HTTP/1.1 pool's connection):
   h11 has switched; the bytes after the ``101`` head are kept, the connection leaves
   the pool's hands for good (never idle again, never reused, no longer counted
   against ``http_max_upstream_connections``) and an
   :class:`UpstreamEnd` takes over its socket (``UpstreamProtocol.downstream``).
2. **Downstream** (:func:`switch_client`, called by the HTTP/1.1 codec's response
   writer): the ``101`` head goes to the client, h11 has switched; the client bytes
   already read past the request are kept, and a :class:`Tunnel` replaces the codec in
   the session.
3. The **tunnel** moves bytes both ways as the L4 splice does (:mod:`gwcore.net.splice`):
   each side's write buffer pauses the other side's reading (nothing is buffered
   without bound), an end of stream (FIN, TLS close_notify) is passed on as a
   half-close, either side being lost closes the other after what was written. The
   connection's ``idle_timeout`` counts these bytes like any others.
4. When both sides are gone the tunnel reports the bytes it moved each way and why
   it ended (``on_end``): the exchange writes its one access-log record (status
   ``101``) then, and the upstream connection closes (the endpoint's picker count is
   released).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h11
from twisted.logger import Logger

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.http_wire import latin1_fields

log = Logger(namespace="tgw.http")

OnEnd = Callable[[int, int, "str | None"], None]
"""``on_end(bytes_up, bytes_down, error)``: ``error`` is ``None`` after a clean end."""


class UpstreamEnd:
    """The service's side of a switched connection (sits on ``UpstreamProtocol.downstream``)."""

    def __init__(self, connection: Any, early: bytes) -> None:
        self.connection = connection  # the pool's Http1Connection: closing it frees its slot
        self.upstream = connection.upstream
        self.early = early
        self.tunnel: Tunnel | None = None
        self.eof = False  # the service finished writing
        self.lost = False

    # --- what the UpstreamProtocol calls ---------------------------------------------

    def send_to_client(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_service(data)

    def upstream_eof(self) -> None:
        self.eof = True
        if self.tunnel is not None:
            self.tunnel.service_finished()

    def upstream_lost(self) -> None:
        self.lost = True
        if self.tunnel is not None:
            self.tunnel.service_lost("the connection to the service was lost")

    def upstream_tls_failed(self, reason: str, detail: str) -> None:
        self.lost = True
        if self.tunnel is not None:
            self.tunnel.service_lost(f"TLS with the service failed: {reason}: {detail}")

    # --- producer of client bytes (registered on the service's transport) ------------

    def pauseProducing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.pause_reading()

    def resumeProducing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client.resume_reading()

    def stopProducing(self) -> None:
        return None

    # --- the tunnel's side -------------------------------------------------------------

    def attach(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        transport = self.upstream.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()  # the pool connection's (request bodies)
        transport.registerProducer(self, True)

    def release(self) -> None:
        """Unregister before a (half-)close: Twisted does not finish closing a transport
        whose registered producer is paused (see ``splice._release``)."""
        transport = self.upstream.transport
        if not self.upstream.lost and getattr(transport, "producer", None) is self:
            transport.unregisterProducer()

    def close(self, reason: str) -> None:
        self.release()
        self.connection.close(reason)


def switch_upstream(connection: Any, stream: Any, event: h11.InformationalResponse) -> None:
    """The service answered ``101`` on ``connection`` (h11 switched): hand the response to
    the exchange with an :class:`UpstreamEnd` as ``stream.upgraded``. The connection is
    the stream's alone from now on: never idle again, closed when the tunnel ends, or at
    once when nobody takes it (an addon answered instead, the client left)."""
    if connection.h11.our_state is not h11.SWITCHED_PROTOCOL:
        # Switched before the request was complete: the rest of its body has no place.
        connection.fail("protocol", "the service switched protocols before the request ended")
        return
    data, _ = connection.h11.trailing_data
    end = UpstreamEnd(connection, bytes(data))
    connection.upstream.downstream = end
    connection.stream = None
    stream.connection = None
    stream.done = True  # a later cancel() must not close what the tunnel owns
    stream.upgraded = end
    connection.pool.switched(connection)  # a tunnel holds no pool slot (docs/l7.md)
    headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
    stream.sink.response_head(HttpResponse(101, headers, None, None, "HTTP/1.1"))
    if end.tunnel is None and not connection.closed:
        end.close("the upgraded connection was not taken")


def switch_client(answer: Any, response: HttpResponse, end: UpstreamEnd, on_end: OnEnd) -> bool:
    """Send ``response`` (a ``101``) on the HTTP/1.1 codec of ``answer`` (its response
    writer) and join the client to ``end`` through a :class:`Tunnel`. False (and the
    connection closed) when h11 refuses the switch: the client did not ask for it."""
    codec = answer.codec
    try:
        data = codec.h11.send(
            h11.InformationalResponse(status_code=101, headers=latin1_fields(response.headers))
        )
    except (h11.LocalProtocolError, UnicodeError) as e:
        codec.refuse_response(str(e))
        return False
    states = (codec.h11.our_state, codec.h11.their_state)
    if states != (h11.SWITCHED_PROTOCOL, h11.SWITCHED_PROTOCOL):
        # Not asked for, or the client's request is not complete (its body would be
        # read as tunnel bytes): the connection cannot be framed any more.
        codec.refuse_response("101 for a request that did not ask to upgrade or did not end")
        return False
    answer.finished = True
    codec.answering = None
    codec.response_producer = None
    codec.closed = True  # the codec is done with this connection: the tunnel has it
    codec.head_timer.disarm()
    early, client_eof = codec.h11.trailing_data
    link = codec.link
    if data:
        link.write(data)
    tunnel = Tunnel(link, end, on_end)
    link.switch_codec(tunnel)
    tunnel.start(bytes(early), client_eof)
    return True


class Tunnel:
    """Both sides of a switched connection; replaces the session's HTTP codec (it is
    a ``DownstreamCodec``: the session hands it the client's bytes and events)."""

    def __init__(self, client: Any, end: UpstreamEnd, on_end: OnEnd) -> None:
        self.client = client  # the session (l7_core.ClientLink)
        self.end = end
        self.on_end = on_end
        self.bytes_up = 0  # client -> service
        self.bytes_down = 0  # service -> client
        self.client_done = False  # the client finished writing (passed on)
        self.service_done = False  # the service finished writing (passed on)
        self.error: str | None = None
        self.ended = False

    def start(self, early: bytes, client_eof: bool) -> None:
        end = self.end
        end.attach(self)
        if early:
            self.data_received(early)
        if end.early:
            self.from_service(end.early)
        if client_eof:
            self.eof_received()
        if end.lost:
            self.service_lost("the service closed the connection")
            return
        if end.eof:
            self.service_finished()
        if not self.ended:
            self.client.resume_reading()  # the codec paused it while the request waited

    # --- client -> service (DownstreamCodec) -------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.ended or self.client_done or not data:
            return
        self.bytes_up += len(data)
        self.end.upstream.send(data)

    def eof_received(self) -> None:
        if self.ended or self.client_done:
            return
        self.client_done = True
        if not self.end.lost:
            self.end.release()
            self.end.upstream.send_eof()

    def connection_lost(self) -> None:
        """The client connection is gone (or the gateway closes it: ``idle_timeout``, a
        policy re-check, the end of a drain): close the service's."""
        if not self.client_done and not self.service_done and self.error is None:
            down = getattr(self.client, "downstream", None)
            cause = getattr(down, "close_cause", None)
            gone = cause in (None, "client_closed", "completed")
            self.error = "client_gone: client connection lost" if gone else cause
        self._finish()

    def set_client_writable(self, writable: bool) -> None:
        if self.ended or self.end.lost:
            return
        transport = self.end.upstream.transport
        if writable:
            transport.resumeProducing()
        else:
            transport.pauseProducing()

    # --- service -> client ------------------------------------------------------------

    def from_service(self, data: bytes) -> None:
        if self.ended or not data:
            return
        self.bytes_down += len(data)
        self.client.write(data)

    def service_finished(self) -> None:
        if self.ended or self.service_done:
            return
        self.service_done = True
        self.client.end_writes()  # close_notify and FIN; the client may go on writing

    def service_lost(self, detail: str) -> None:
        if self.ended:
            return
        if not self.service_done:
            self.error = "reset"
            log.info("upgraded connection to the service ended: {detail}", detail=detail)
        self.client.close("upstream_closed")  # the session then calls connection_lost

    # --- the end -------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.end.connection.closed:
            self.end.close("the upgraded connection ended")
        try:
            self.on_end(self.bytes_up, self.bytes_down, self.error)
        except Exception:
            log.failure("recording the upgraded connection failed")
