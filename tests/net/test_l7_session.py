"""The L7 session's writes toward the client: held while a read is handled, and never
overtaken by the half-close that ends them."""

from __future__ import annotations

from typing import Any

from gwcore.net.l7_core import L7Limits
from gwcore.net.l7_session import L7Session
from gwcore.net.write_batch import BATCH


class Downstream:
    """What the session writes to: the client's side of the splice, recording in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.close_cause = None

    def send_to_client(self, data: bytes) -> None:
        self.events.append(data)

    def upstream_eof(self) -> None:
        self.events.append("half-close")


def test_a_half_close_goes_after_the_bytes_a_batch_still_holds() -> None:
    """A tunnel that relays the service's last bytes and its end in one read (the
    WebSocket ``hangup`` case) writes the bytes while the read's batch holds them, then
    half-closes: the client gets the bytes first, then close_notify and FIN. (The half
    close once went out first and the held bytes were written after it, lost.)"""
    session = L7Session(starter=None, limits=L7Limits(), on_bad_request=lambda r, d: None)  # type: ignore[arg-type]
    down = Downstream()
    session.downstream = down
    with BATCH:
        session.write(b"bye")
        session.end_writes()
    assert down.events == [b"bye", "half-close"]
