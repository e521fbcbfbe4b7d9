"""The access-log schema: fields every record carries, and how each is written.

A log pipeline wants a fixed shape: every key in :data:`RECORD_KEYS` is present in
every record (``null`` when unknown), times are RFC 3339 with ``+00:00``, durations
come from the monotonic clock, and ``host:port`` strings bracket IPv6 addresses.
Records also say which process wrote them (``host``, ``pid``, ``worker``), and
``connection_id`` is unique across the workers of one supervisor.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

RECORD_KEYS: tuple[str, ...] = (
    "time",
    "record_type",
    "start_time",
    "end_time",
    "site",
    "connection_id",
    "host",
    "pid",
    "worker",
    "client",
    "downstream_local_address",
    "sni",
    "tls_version",
    "tls_cipher",
    "alpn",
    "handshake_seconds",
    "peer_certificate_uri",
    "peer_certificate_serial",
    "peer_certificate_expiry",
    "source",
    "destination",
    "datacenter",
    "via",
    "decision",
    "engine",
    "reason",
    "upstream_host",
    "endpoint",
    "endpoint_hostname",
    "endpoint_source",
    "upstream_local_address",
    "bytes_upstream",
    "bytes_downstream",
    "duration_seconds",
    "connect_seconds",
    "connect_attempts",
    "close_cause",
    "close_detail",
    "annotations",
)
"""Every access-log key, in the order written (docs/metrics.md describes each)."""

_HOST = socket.gethostname()


def _worker_index() -> int | None:
    raw = os.environ.get("TGW_WORKER_INDEX")
    return int(raw) if raw and raw.isdigit() else None


def _id_counter() -> Iterator[int]:
    # A worker (gwcore.workers) starts its ids at pid << 30: unique across the
    # workers alive together, and below 2**53 so JSON readers keep them exact.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _worker_index() is not None:
        return itertools.count(((os.getpid() & 0x3FFFFF) << 30) + 1)
    return itertools.count(1)


_ids: Iterator[int] | None = None


def next_connection_id() -> int:
    """A connection id, unique within this process and across one supervisor's workers
    (started on first use: a worker has set its environment by then)."""
    global _ids
    if _ids is None:
        _ids = _id_counter()
    return next(_ids)


def process_fields() -> dict[str, Any]:
    """``host``, ``pid`` and ``worker`` (``null`` without workers) of this process."""
    return {"host": _HOST, "pid": os.getpid(), "worker": _worker_index()}


def rfc3339(timestamp: float) -> str:
    """``2026-12-06T05:54:25.123456+00:00`` for a POSIX timestamp."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def host_port(host: str | None, port: int | None) -> str | None:
    """``host:port``, IPv6 addresses in brackets (RFC 3986); ``None`` without a host."""
    if not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def address_of(transport: Any, local: bool) -> str | None:
    """The transport's own (``local``) or peer address as :func:`host_port`, or ``None``."""
    try:
        addr = transport.getHost() if local else transport.getPeer()
    except Exception:  # no socket any more, or a test's fake transport
        return None
    return host_port(getattr(addr, "host", None), getattr(addr, "port", None))


def certificate_fields(cert: Any) -> dict[str, Any]:
    """URI SAN, serial (hex) and notAfter (RFC 3339) of a pyOpenSSL certificate."""
    fields: dict[str, Any] = {
        "peer_certificate_uri": None,
        "peer_certificate_serial": None,
        "peer_certificate_expiry": None,
    }
    if cert is None:
        return fields
    try:
        crypto_cert = cert.to_cryptography()
        fields["peer_certificate_serial"] = format(crypto_cert.serial_number, "x")
        fields["peer_certificate_expiry"] = crypto_cert.not_valid_after_utc.isoformat()
        from cryptography import x509

        san = crypto_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        fields["peer_certificate_uri"] = uris[0] if uris else None
    except Exception:  # no SAN extension, or a certificate cryptography cannot parse
        pass
    return fields


def complete(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every key of :data:`RECORD_KEYS` (``None`` where missing), in order;
    keys a driver or addon added beyond the schema follow."""
    ordered = {key: record.get(key) for key in RECORD_KEYS}
    for key, value in record.items():
        if key not in ordered:
            ordered[key] = value
    return ordered
