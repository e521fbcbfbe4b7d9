"""Writes made while one reactor event is handled, sent together when it ends.

An upstream read that holds a whole small response (status line, headers, body) used
to reach the client as one TLS record and one ``send`` per piece the codec wrote:
the head, then the body. HAProxy and nginx send such a response in one record. A
:class:`WriteBatch` is open while an L7 read is handled (the client's bytes in
:mod:`gwcore.net.l7_session`, the service's in :mod:`gwcore.net.http1_client`);
a writer that finds it open keeps its bytes and asks to be flushed when the batch
closes, so everything one read produced goes out in one write per connection.

Rules that keep this safe:

- Only the order of writes on one connection matters, and a writer keeps its own
  pieces in order; what it writes while no batch is open goes out at once, after
  what it held (it flushes first).
- A writer flushes before it closes (``close_notify`` after the response), and
  flushes at once when it holds :data:`FLUSH_AT` bytes, so a large body streams as
  before and nothing buffers beyond one read's worth.
- One batch per process: the reactor handles one event at a time, and a batch opened
  inside another (a client read that answers at once, inside an upstream read that
  ended an exchange) closes with the outermost.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

log = Logger(namespace="tgw.http")

FLUSH_AT = 16 * 1024
"""Held bytes at which a writer sends at once (one TLS record's worth)."""


class WriteBatch:
    """Depth of open batches and the writers waiting for the outermost to close."""

    __slots__ = ("depth", "waiting")

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[Callable[[], None]] = []

    def __enter__(self) -> WriteBatch:
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.waiting:
            self.flush()

    def hold(self, flush: Callable[[], None]) -> None:
        """``flush`` runs when the outermost batch closes (call once per held run)."""
        self.waiting.append(flush)

    def flush(self) -> None:
        # A flush may write through another batch-aware writer (TLS to a service):
        # whatever it adds is flushed in the same loop.
        waiting = self.waiting
        while waiting:
            flush = waiting.pop(0)
            try:
                flush()
            except Exception:
                log.failure("flushing held writes failed")


BATCH = WriteBatch()
"""The process's batch (see the module docstring)."""


class HeldWrites:
    """One connection's bytes held while a batch is open; ``send`` writes them."""

    __slots__ = ("held", "pieces", "send", "size")

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.pieces: list[bytes] = []
        self.size = 0
        self.held = False

    def write(self, data: bytes) -> None:
        if not BATCH.depth:
            if self.pieces:
                self.flush()
            self.send(data)
            return
        self.pieces.append(data)
        self.size += len(data)
        if self.size >= FLUSH_AT:
            self.flush()
        elif not self.held:
            self.held = True
            BATCH.hold(self.flush)

    def flush(self) -> None:
        """Send what is held, as one write (idempotent)."""
        self.held = False
        pieces = self.pieces
        if not pieces:
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.pieces = []
        self.size = 0
        self.send(data)
