"""The access-log schema for log pipelines (docs/metrics.md, "Access log"): every key in
every record, RFC 3339 times, monotonic durations, addresses bracketed, the TLS
parameters and the presented certificate, the upstream tried, the writing process."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from datetime import datetime

import pytest_twisted

from gwcore.net.access_fields import RECORD_KEYS, host_port
from gwcore.testing import MeshCA
from tests.harness import (
    TRUST_DOMAIN,
    HandshakeRefusedError,
    free_port,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)


def _catalog(gateway, port: int) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))


def _attempt(port: int, sni: str, files) -> bytes:
    try:
        return request(port, sni, files)
    except (HandshakeRefusedError, ssl.SSLError, ConnectionError):
        return b"refused"


def _time(value: str) -> datetime:
    assert value.endswith("+00:00"), value
    return datetime.fromisoformat(value)


@pytest_twisted.ensureDeferred
async def test_a_forwarded_connection_has_every_field(gateway, upstreams):
    """An allowed connection's record has exactly the schema's keys first, RFC 3339
    start/end times with ``+00:00`` (end = start + the monotonic duration), both local
    addresses, TLS version and cipher, the client certificate's URI/serial/expiry, the
    upstream host, and the writing process (host, pid; worker null without workers)."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    await gateway.start()
    leaf = gateway.ca.leaf("web")
    assert (
        await in_thread(
            request, gateway.port, sni_for("billing"), gateway.client_files("web", leaf)
        )
        == b"ok"
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert tuple(record)[: len(RECORD_KEYS)] == RECORD_KEYS
    start, end = _time(record["start_time"]), _time(record["end_time"])
    assert record["time"] == record["start_time"]
    assert abs((end - start).total_seconds() - record["duration_seconds"]) < 0.001
    assert record["downstream_local_address"] == f"127.0.0.1:{gateway.port}"
    assert record["upstream_local_address"].startswith("127.0.0.1:")
    assert record["upstream_host"] == record["endpoint"] == f"127.0.0.1:{up.port}"
    assert record["tls_version"] == "TLSv1.3"
    assert record["tls_cipher"].startswith("TLS_")
    assert record["peer_certificate_uri"] == f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
    assert record["peer_certificate_serial"] == format(leaf.certificate.serial_number, "x")
    assert _time(record["peer_certificate_expiry"]) == leaf.certificate.not_valid_after_utc
    assert (record["pid"], record["worker"]) == (os.getpid(), None)
    assert record["host"]
    assert record["close_detail"] is None and record["annotations"] is None


@pytest_twisted.ensureDeferred
async def test_a_refused_certificate_is_still_described(gateway, upstreams):
    """A client whose leaf comes from a CA the gateway does not trust is refused in the
    handshake; its record still names the certificate it presented (URI, serial,
    expiry), and every key is present with null where nothing is known."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    await gateway.start()
    stranger = MeshCA(TRUST_DOMAIN).leaf("web")
    files = gateway.client_files("web", stranger)
    assert await in_thread(_attempt, gateway.port, sni_for("billing"), files) == b"refused"
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert set(RECORD_KEYS) <= set(record)
    assert record["close_cause"].startswith("handshake:")
    assert record["peer_certificate_serial"] == format(stranger.certificate.serial_number, "x")
    assert record["peer_certificate_uri"].endswith("/svc/web")
    assert record["endpoint"] is None and record["upstream_host"] is None
    assert record["source"] is None and record["tls_version"] is None


@pytest_twisted.ensureDeferred
async def test_the_upstream_host_is_logged_when_the_connect_failed(gateway):
    """When every connect is refused, ``endpoint`` (the one spliced) stays null but
    ``upstream_host`` names the endpoint that was tried."""
    port = free_port()
    _catalog(gateway, port)
    await gateway.start()
    files = gateway.client_files("web")
    assert await in_thread(_attempt, gateway.port, sni_for("billing"), files) in (b"", b"refused")
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    record = gateway.access_records()[0]
    assert record["close_cause"] == "upstream_unavailable"
    assert record["endpoint"] is None
    assert record["upstream_host"] == f"127.0.0.1:{port}"


def test_ipv6_addresses_are_bracketed_everywhere() -> None:
    """``host:port`` strings bracket IPv6 (RFC 3986), never twice, and leave IPv4 alone."""
    assert host_port("::1", 443) == "[::1]:443"
    assert host_port("[::1]", 443) == "[::1]:443"
    assert host_port("127.0.0.1", 443) == "127.0.0.1:443"
    assert host_port(None, 443) is None


def test_connection_ids_differ_between_workers(tmp_path) -> None:
    """Two worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as gwcore.workers sets it)
    hand out different connection ids, and each names its worker index."""
    code = (
        "import json; from gwcore.net.access_fields import next_connection_id, process_fields;"
        "print(json.dumps([next_connection_id(), next_connection_id(), process_fields()]))"
    )
    seen = []
    for index in (0, 1):
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "TGW_WORKER_INDEX": str(index),
        }
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        seen.append(json.loads(out.stdout))
    (a1, a2, pa), (b1, b2, pb) = seen
    assert a2 == a1 + 1 and b2 == b1 + 1
    assert {a1, a2}.isdisjoint({b1, b2})
    assert max(a1, b1) < 2**53
    assert (pa["worker"], pb["worker"]) == (0, 1)
    assert pa["pid"] != pb["pid"]


@pytest_twisted.ensureDeferred
async def test_the_reason_names_the_catalog_file_relative_to_the_config(gateway, upstreams):
    """The deciding intention's origin in ``reason`` is the catalog file relative to the
    config's directory (``catalog/ixn.json``), never an absolute path."""
    up = upstreams(hello(b"ok"))
    _catalog(gateway, up.port)
    await gateway.start()
    assert (
        await in_thread(request, gateway.port, sni_for("billing"), gateway.client_files("web"))
        == b"ok"
    )
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    reason = gateway.access_records()[0]["reason"]
    assert "from catalog/ixn.json" in reason, reason
    assert str(gateway.root) not in reason


@pytest_twisted.ensureDeferred
async def test_catalog_freshness_moves_on_a_quiet_catalog(gateway):
    """``tgw_catalog_last_success_timestamp_seconds`` moves on every successful poll of
    the file catalog, also when no file changed (an age alert must not fire on a quiet
    catalog)."""
    _catalog(gateway, free_port())
    await gateway.start()
    first = gateway.metric("tgw_catalog_last_success_timestamp_seconds", source="file_catalog")
    assert first > 0
    await gateway.wait_for(
        lambda: (
            gateway.metric("tgw_catalog_last_success_timestamp_seconds", source="file_catalog")
            > first
        )
    )


@pytest_twisted.ensureDeferred
async def test_a_long_lived_connection_gets_periodic_records(gateway, upstreams):
    """With ``access_log_flush_interval``, an open connection gets ``record_type =
    "periodic"`` records (bytes so far, no close cause) before its final ``"closed"``
    record, all with its connection id."""
    from tests.harness import echo, tls_connect

    up = upstreams(echo)
    _catalog(gateway, up.port)
    gateway.site_options = {**gateway.site_options, "access_log_flush_interval": "0.2s"}
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    try:
        await in_thread(sock.sendall, b"hello")
        assert await in_thread(sock.recv, 5) == b"hello"
        await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
        periodic = gateway.access_records()[0]
        assert periodic["record_type"] == "periodic"
        assert periodic["close_cause"] is None
        assert periodic["bytes_upstream"] == 5
    finally:
        sock.close()
    await gateway.wait_for(lambda: gateway.access_records()[-1]["record_type"] == "closed")
    records = gateway.access_records()
    assert {r["connection_id"] for r in records} == {periodic["connection_id"]}
    assert records[-1]["close_cause"] is not None
