"""RFC 8441 (WebSocket over HTTP/2's extended CONNECT) is not served at L7 destinations.

The HTTP/2 codec runs behind a real TLS front on loopback (``tests/h2_front.py``: a
real h2 client, the codec, and a stand-in service that records what reaches it).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from h2.errors import ErrorCodes

from tests.h2_front import Front, front
from tests.h2_peers import request_head
from tests.harness import in_thread

__all__ = ["front"]  # the fixture


@pytest_twisted.ensureDeferred
async def test_extended_connect_for_websocket_is_reset_and_the_connection_goes_on(
    front: Front,
) -> None:
    """The gateway never announces ``SETTINGS_ENABLE_CONNECT_PROTOCOL``; a client that
    sends an extended CONNECT (``:protocol: websocket``) anyway gets its stream reset
    like any CONNECT (``connect_refused``), nothing reaches the service, and the next
    request on the connection is served."""

    def run() -> Any:
        client = front.client(validate=False)
        sid = client.request(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":path", b"/chat"),
                (b":authority", b"billing"),
                (b"sec-websocket-version", b"13"),
            ],
            keep_open=True,
        )
        client.wait(client.finished(sid))
        again = client.request(request_head(path="/after"), body=b"ok")
        client.wait(client.finished(again))
        # The gateway's SETTINGS arrived long before its answers: what it announced.
        announced = client.conn.remote_settings.enable_connect_protocol
        return announced, client.responses[sid], client.responses[again]

    announced, refused, again = await in_thread(run)
    assert announced == 0
    assert refused.reset == ErrorCodes.PROTOCOL_ERROR
    assert bytes(again.body) == b"ok"
    assert front.errors == ["connect_refused"]
    assert [r.headers[b":path"] for r in front.service.requests] == [b"/after"]
