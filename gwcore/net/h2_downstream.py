"""The server side of HTTP/2 on a mesh connection: one exchange per stream.

Used for ``http2``/``grpc`` destinations when ALPN agreed ``h2`` or the client sent
the prior-knowledge preface (:func:`gwcore.policy.http2_rules.preface_state`).
Each request head opens a stream whose events go to the :class:`StreamPeer` that
``open_exchange`` returns (the exchange of the L7 core); flow control and protocol
errors follow :mod:`gwcore.net.h2_link`.

SETTINGS we send: at most :data:`~gwcore.net.h2_link.MAX_CONCURRENT_STREAMS`
streams, a header list of at most ``max_request_headers_kb`` KiB (Consul's
``MaxRequestHeadersKB``; a bigger head is a connection error, GOAWAY), per-stream
and connection windows from :mod:`gwcore.net.h2_link`, no server push.
"""

from __future__ import annotations

from collections.abc import Callable

import h2.events

from gwcore.net.h2_link import H2Link, H2Stream, HeaderList, StreamPeer

OpenExchange = Callable[[H2Stream, HeaderList], "StreamPeer | None"]


class H2Downstream(H2Link):
    """HTTP/2 server on one downstream connection (module docstring)."""

    client_side = False

    def __init__(
        self,
        open_exchange: OpenExchange,
        *,
        max_request_headers_kb: int = 96,
        on_protocol_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            max_header_list_size=max_request_headers_kb * 1024,
            on_protocol_error=on_protocol_error,
        )
        self._open_exchange = open_exchange
        self.requests = 0

    def other_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = H2Stream(self, event.stream_id)
            self.streams[event.stream_id] = stream
            self.requests += 1
            stream.peer = self._open_exchange(stream, list(event.headers or ()))
