"""Which client certificates are a service identity (issue 16), end to end: real TLS
clients (Python's ssl) over loopback against an in-process gateway."""

from __future__ import annotations

import ssl

import pytest
import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    registration,
    request,
    sni_for,
    write_json,
)


def setup_catalog(gateway, services: dict[str, int], rules: list[dict] | None = None) -> None:
    write_json(gateway.catalog / "gateway.json", gateway_entry(*services))
    regs = [registration(name, port) for name, port in services.items()]
    write_json(gateway.catalog / "registrations.json", regs)
    write_json(
        gateway.catalog / "intentions.json",
        rules if rules is not None else [intentions(s, ("*", "allow")) for s in services],
    )


def attempt(port: int, sni: str, files) -> bytes:
    """One request; ``b"refused"`` when the handshake or the first read fails."""
    try:
        return request(port, sni, files)
    except (HandshakeRefusedError, ssl.SSLError, ConnectionError):
        return b"refused"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        pytest.param({"is_ca": True}, "ca_certificate", id="ca-true"),
        # keyAgreement satisfies OpenSSL's own client-purpose check; only ours refuses it.
        pytest.param({"key_usage": ("key_agreement",)}, "bad_key_usage", id="no-signature"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_leaves_that_are_no_client_end_entity_are_refused(
    gateway, upstreams, options, reason
):
    """A leaf with a valid SPIFFE ID from the mesh CA that is itself a CA
    (basicConstraints CA:TRUE) or cannot sign is refused, counted by reason, never
    forwarded; a normal leaf from the same CA is served."""
    up = upstreams(hello(b"billing"))
    setup_catalog(gateway, {"billing": up.port})
    await gateway.start()
    bad = gateway.client_files("web", gateway.ca.leaf("web", **options))
    assert await in_thread(attempt, gateway.port, sni_for("billing"), bad) in (b"refused", b"")
    await gateway.wait_for(
        lambda: gateway.metric("tgw_tls_handshake_errors_total", reason=reason) == 1
    )
    assert up.accepted == 0
    good = gateway.client_files("web")
    assert await in_thread(attempt, gateway.port, sni_for("billing"), good) == b"billing"
