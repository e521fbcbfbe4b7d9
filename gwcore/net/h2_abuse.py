"""Bounds on what one HTTP/2 client may make the gateway do for nothing.

Sans-IO counters, one set per client connection (``h2_downstream``); when one trips,
the connection ends with GOAWAY ``ENHANCE_YOUR_CALM`` and the bad-request reason
``abuse`` (docs/l7-http2.md).

- **Rapid reset** (CVE-2023-44487): a client opens streams and resets them at once,
  so the gateway starts work it never finishes. As Envoy's premature-reset check
  (``overload.premature_reset_total_stream_count`` 500,
  ``overload.premature_reset_min_stream_lifetime_seconds``): once a connection opened
  at least ``PREMATURE_RESET_MIN_STREAMS`` streams and more than half of them were reset
  by the client before their response was complete, it is abuse. A stream reset in the
  same read as its head never starts an exchange at all (no authorization, no log).
"""

from __future__ import annotations

PREMATURE_RESET_MIN_STREAMS = 500
"""Streams a connection opens before its share of premature resets is judged (Envoy's)."""


class ResetBudget:
    """Premature client resets of one connection (module docstring)."""

    __slots__ = ("min_streams", "opened", "premature")

    def __init__(self, min_streams: int = PREMATURE_RESET_MIN_STREAMS) -> None:
        self.min_streams = min_streams
        self.opened = 0
        self.premature = 0

    def stream_opened(self) -> None:
        self.opened += 1

    def premature_reset(self) -> bool:
        """Count a client reset of an unfinished stream; True: the bound is crossed."""
        self.premature += 1
        return self.opened >= self.min_streams and self.premature * 2 > self.opened

    def detail(self) -> str:
        return f"rapid reset: {self.premature} of {self.opened} streams reset by the client"


MAX_OUTBOUND_CONTROL_FRAMES = 1000
"""PING/SETTINGS acknowledgements owed to a client that does not read (Envoy's
``max_outbound_control_frames``)."""

MAX_CONSECUTIVE_EMPTY_FRAMES = 1
"""DATA frames in a row with no payload and no END_STREAM (Envoy's
``max_consecutive_inbound_frames_with_empty_payload``)."""

MAX_PRIORITY_PER_STREAM = 100
"""Envoy's ``max_inbound_priority_frames_per_stream``."""

MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT = 10
"""Envoy's ``max_inbound_window_update_frames_per_data_frame_sent``."""


class FrameBudget:
    """Frames that cost the gateway work but carry nothing, per client connection.

    As Envoy's HTTP/2 flood checks: acknowledgements (PING, SETTINGS) owed while the
    client does not read its socket; runs of empty DATA frames; PRIORITY frames beyond
    ``5 + 2 * 100 * (1 + streams)``; WINDOW_UPDATE frames beyond
    ``5 + 2 * (streams + 10 * DATA frames sent)``. Each check returns why the client is
    abusive, or ``None``.
    """

    __slots__ = ("empty_run", "owed_acks", "priorities", "window_updates")

    def __init__(self) -> None:
        self.empty_run = 0
        self.owed_acks = 0
        self.priorities = 0
        self.window_updates = 0

    def data_frame(self, empty: bool) -> str | None:
        self.empty_run = self.empty_run + 1 if empty else 0
        if self.empty_run > MAX_CONSECUTIVE_EMPTY_FRAMES:
            return f"{self.empty_run} empty DATA frames in a row"
        return None

    def payload_frame(self) -> None:
        """A frame with a payload (a head, a non-empty DATA) ends a run of empty ones."""
        self.empty_run = 0

    def control_ack(self, client_blocked: bool) -> str | None:
        """An acknowledgement goes out; ``client_blocked``: the client is not reading."""
        self.owed_acks = self.owed_acks + 1 if client_blocked else 0
        if self.owed_acks > MAX_OUTBOUND_CONTROL_FRAMES:
            return f"{self.owed_acks} PING/SETTINGS acknowledgements the client does not read"
        return None

    def client_reads(self) -> None:
        self.owed_acks = 0

    def priority(self, streams: int) -> str | None:
        self.priorities += 1
        if self.priorities > 5 + 2 * MAX_PRIORITY_PER_STREAM * (1 + streams):
            return f"{self.priorities} PRIORITY frames for {streams} streams"
        return None

    def window_update(self, streams: int, data_frames_sent: int) -> str | None:
        self.window_updates += 1
        bound = 5 + 2 * (streams + MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT * data_frames_sent)
        if self.window_updates > bound:
            return (
                f"{self.window_updates} WINDOW_UPDATE frames for {data_frames_sent} "
                "DATA frames sent"
            )
        return None
