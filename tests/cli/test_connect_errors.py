"""``tgw connect`` says why the gateway refused a connection, not just an empty reply.

A real in-process gateway (harness ``gateway``) refuses an SNI it does not route with
``unrecognized_name``, and closes a denied connection after the handshake without a
byte; the proxy's log line says which, and points at the gateway's access log. Other
causes are checked on OpenSSL's own wording.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from gwcore.cli.connect import ConnectFactory, LeafSource
from gwcore.cli.connect_errors import explain_failure
from gwcore.policy.model import SpiffeID
from gwcore.testing import TRUST_DOMAIN
from tests.harness import in_thread, intentions, read_all, sni_for
from tests.net.test_terminator import setup_catalog


async def proxy_log_of_one_connection(gateway: Any, upstream: str) -> list[str]:
    """Run the proxy towards ``upstream`` through the started gateway, send one request,
    and return the proxy's log lines once the (empty) reply has ended."""
    ca = gateway.ca
    assert ca is not None
    factory = ConnectFactory(
        TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.port),
        LeafSource(lambda: (ca.leaf("web"), [ca.cert]), reactor.seconds),
        sni_for(upstream),
        SpiffeID(TRUST_DOMAIN, "default", "dc1", upstream).uri,
        reactor,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "tgw.connect":
            lines.append(formatEvent(event))

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
            s.sendall(b"hello")
            return read_all(s)

    globalLogPublisher.addObserver(observe)
    try:
        assert await in_thread(talk) == b""
        await gateway.wait_for(lambda: bool(lines))
    finally:
        globalLogPublisher.removeObserver(observe)
        await port.stopListening()
    return lines


@pytest_twisted.ensureDeferred
async def test_unknown_sni_is_reported_as_such_by_the_proxy(gateway, upstreams) -> None:
    """The local client gets its connection closed; the proxy logs "the gateway refused the
    handshake: unknown SNI ..." with the SNI and a pointer to the access log."""
    setup_catalog(gateway, {"billing": [upstreams().port]})
    await gateway.start()
    (line,) = await proxy_log_of_one_connection(gateway, "ledger")
    assert f"the gateway refused the handshake: unknown SNI {sni_for('ledger')}" in line, line
    assert "see its access log" in line


@pytest_twisted.ensureDeferred
async def test_a_denied_connection_is_reported_as_closed_before_any_reply(
    gateway, upstreams
) -> None:
    """Intentions deny web -> billing: the handshake succeeds, the gateway then closes
    without a byte, and the proxy says so (pointing at the access log) once."""
    rules = [intentions("billing", ("web", "deny"))]
    setup_catalog(gateway, {"billing": [upstreams().port]}, rules=rules)
    await gateway.start()
    (line,) = await proxy_log_of_one_connection(gateway, "billing")
    assert line.startswith(f"the gateway closed the connection to {sni_for('billing')} "), line
    assert "denied by its authorization" in line and "see its access log" in line


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "TLS handshake with the service failed: sslv3 alert handshake failure",
            "no certificate for SNI s",
        ),
        (
            "TLS handshake with the service failed: tlsv1 alert unknown ca",
            "does not trust this proxy",
        ),
        ("Connection was refused by other side: 111", "nothing accepts connections at g"),
        ("something else entirely", "something else entirely"),
    ],
    ids=["handshake-failure", "unknown-ca", "refused", "unknown"],
)
def test_other_causes_are_explained(message: str, expected: str) -> None:
    """Each known alert or cause gets its sentence (the original text kept in brackets)."""
    assert expected in explain_failure(message, sni="s", gateway="g")
