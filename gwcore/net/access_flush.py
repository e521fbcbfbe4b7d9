"""Periodic access-log records for long-lived connections (Envoy's access-log flush
interval): a connection open for hours is visible before it ends.

Every ``access_log_flush_interval`` a spliced connection gets a record like its final
one but with ``record_type = "periodic"`` (bytes and duration so far, ``close_cause``
null). The final record (``record_type = "closed"``) is written as before.
"""

from __future__ import annotations

from typing import Any


def periodic_record(owner: Any, conn: Any, now: float) -> None:
    """Called by the forward step's sweep for each open connection (``now``: reactor
    seconds); ``owner`` has ``config``, ``access_log`` and ``log``."""
    interval = owner.config.access_log_flush_interval
    writer = owner.access_log
    if interval <= 0 or writer is None or not getattr(writer, "enabled", True):
        return
    if now - getattr(conn, "flushed_at", conn.started) < interval:
        return
    conn.flushed_at = now
    record = conn.access_record()
    record["record_type"] = "periodic"
    record["close_cause"] = None
    try:
        writer(record)
    except Exception:
        owner.log.failure("writing the access log failed")
