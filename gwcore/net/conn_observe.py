"""What a terminating connection reports at the end of its handshake (metrics, and
the access log's TLS fields), kept apart from the driver (gwcore.net.terminator)."""

from __future__ import annotations

import time
from typing import Any

from gwcore.net.access_fields import certificate_fields
from gwcore.net.client_trust import VERIFY_ERROR_REASONS


def init_facts(conn: Any) -> None:
    """The facts a new connection fills in as it goes, unknown (``None``) at accept."""
    conn.started_monotonic = time.monotonic()
    conn.tls_version = None
    conn.tls_cipher = None
    # The presented leaf (pyOpenSSL), described (access_fields.certificate_fields) only
    # when a record is built: most connections of a site without an access log never are.
    conn.peer_x509 = None
    conn.saw_bytes = False  # a connect that sends nothing is a health check, not TLS


def handshake_completed(conn: Any, tls: Any) -> None:
    """Record the handshake's duration (monotonic), TLS version and cipher on ``conn``
    and in ``tgw_tls_handshake_seconds`` / ``tgw_tls_handshakes_total{version}``."""
    conn.handshake_seconds = time.monotonic() - conn.started_monotonic
    conn.tls_version = tls.get_protocol_version_name()
    conn.tls_cipher = tls.get_cipher_name()
    site = conn.site
    site.children.handshake_seconds.observe(conn.handshake_seconds)
    site.children.handshakes(conn.tls_version).inc()


def leaf_if_unfinished(conn: Any) -> None:
    """The leaf of a handshake that verified the client's chain and then failed or was
    abandoned, for its access record: a verified chain is not reported to Python as it
    is checked (gwcore.net.client_verify); OpenSSL keeps the leaf in the session."""
    if conn.peer_x509 is None and conn.tls is not None:
        conn.peer_x509 = conn.tls.get_peer_certificate()


def handshake_reason(conn: Any, error: Exception | None) -> str:
    """Why ``conn``'s handshake failed, as a bounded metric label: what the driver saw
    (an addon veto, a route miss, a certificate verify error), else OpenSSL's error."""
    if conn.hello_veto is not None:
        return "addon_veto"
    if conn.route_miss is not None:
        return conn.route_miss
    if conn.verify_error is not None:
        return VERIFY_ERROR_REASONS.get(conn.verify_error, "bad_client_cert")
    text = str(error or "")
    if "peer did not return a certificate" in text or "certificate required" in text:
        return "no_client_cert"
    if ("version" in text and "wrong" in text) or "unsupported protocol" in text:
        return "tls_version"
    if "http request" in text:
        return "not_tls"
    return "protocol_error"


def handshake_abandoned(conn: Any) -> None:
    """The client left mid-handshake. Without a single byte sent it was a bare TCP
    connect (a load balancer's health check, a port scan): ``no_data``, counted apart
    from TLS failures; otherwise the handshake error ``client_closed``."""
    site = conn.site
    if conn.saw_bytes:
        site.metrics.handshake_errors.labels(site=site.name, reason="client_closed").inc()
        conn.close_cause = "handshake:client_closed"
    else:
        site.metrics.no_data.labels(site=site.name).inc()
        conn.close_cause = "no_data"


def fin_in_handshake(conn: Any) -> None:
    """The client's FIN arrived before the handshake completed: a handshake failure
    (``client_closed``) after some bytes, else a bare TCP connect (``no_data``)."""
    if conn.saw_bytes:
        conn._handshake_failed(None, "client_closed")
    else:
        handshake_abandoned(conn)
        conn._close(conn.close_cause, abort=False)


def record_fields(conn: Any) -> dict[str, Any]:
    """The TLS-terminating connection's own access-log fields (decision, TLS facts)."""
    decision = conn.decision
    return {
        "source": conn.identity.uri if conn.identity else None,
        "destination": conn.destination.name if conn.destination else None,
        "decision": decision.verdict.value if decision else None,
        "engine": decision.engine if decision else None,
        "reason": decision.reason if decision else None,
        "alpn": conn.alpn.decode("ascii", "replace") if conn.alpn else None,
        "tls_version": conn.tls_version,
        "tls_cipher": conn.tls_cipher,
        **certificate_fields(conn.peer_x509),
        "handshake_seconds": round(conn.handshake_seconds, 6) if conn.handshake_seconds else None,
    }
