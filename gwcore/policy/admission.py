"""Admission: how many client connections and TLS handshakes one process takes on.

Three limits, checked in this order when a connection is accepted, before any TLS
work is done for it (a refused client costs an accept and a close):

1. ``[gateway] max_connections`` — open client connections in the whole process,
   every site together (reason ``process_overflow``);
2. ``[gateway] max_handshakes`` — connections still in their TLS handshake, every
   site together (reason ``handshake_overflow``). A handshake costs CPU and buffers
   while an established, idle connection costs little, so a flood of slow or
   half-open handshakes is refused before it starves the clients already admitted;
3. ``[sites.NAME] max_connections`` — open connections on that site (``overflow``).

An admitted connection holds one connection slot until it closes and one handshake
slot until its handshake finishes (or it closes first). Sans-IO: the caller counts
refusals and closes sockets; this only keeps the numbers. Every process (worker) of a
gateway has its own :class:`Admission`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every refusal reason :meth:`Admission.admit` returns (``tgw_downstream_rejected`` labels).
ADMISSION_REASONS = frozenset({"process_overflow", "handshake_overflow", "overflow"})


@dataclass(slots=True)
class Admission:
    """The process-wide counts; ``max_*`` of 0 means no limit."""

    max_connections: int = 0
    max_handshakes: int = 0
    connections: int = 0
    handshakes: int = 0

    def admit(self, site_active: int, site_limit: int) -> str | None:
        """Take a connection slot and a handshake slot, or name the limit that refuses."""
        if self.max_connections and self.connections >= self.max_connections:
            return "process_overflow"
        if self.max_handshakes and self.handshakes >= self.max_handshakes:
            return "handshake_overflow"
        if site_limit and site_active >= site_limit:
            return "overflow"
        self.connections += 1
        self.handshakes += 1
        return None

    def handshake_finished(self) -> None:
        """An admitted connection finished its handshake (successfully or not)."""
        self.handshakes -= 1

    def closed(self, handshaking: bool) -> None:
        """An admitted connection closed; ``handshaking`` if it still held a handshake slot."""
        self.connections -= 1
        if handshaking:
            self.handshakes -= 1
