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
