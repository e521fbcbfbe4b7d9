"""An SNI the gateway does not serve is answered with the ``unrecognized_name`` alert.

RFC 6066 §3: a server that does not recognise the name may send a fatal
``unrecognized_name`` (112) alert. The client (Python's ssl, i.e. OpenSSL) sees that
alert, so ``tgw connect`` and other clients can say why they were refused; a
missing SNI still gets OpenSSL's own alert.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.harness import (
    HandshakeRefusedError,
    handshake_transcript,
    in_thread,
    sni_for,
    tls_connect,
)
from tests.net.test_terminator import setup_catalog


@pytest_twisted.ensureDeferred
async def test_unknown_sni_gets_the_unrecognized_name_alert(gateway, upstreams) -> None:
    """A well-formed SNI with no route: the client's handshake fails on alert 112."""
    setup_catalog(gateway, {"billing": [upstreams().port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    with pytest.raises(HandshakeRefusedError) as refused:
        await in_thread(tls_connect, gateway.port, sni_for("ledger"), cert, key, root)
    assert "UNRECOGNIZED_NAME" in str(refused.value.error), refused.value
    transcript = await in_thread(
        handshake_transcript, gateway.port, sni_for("ledger"), (cert, key, root)
    )
    assert transcript.error is not None and not transcript.certificate_received, transcript.states
    await gateway.wait_for(lambda: gateway.metric("tgw_no_route_total", reason="unknown_sni") == 2)


@pytest_twisted.ensureDeferred
async def test_missing_sni_keeps_openssls_alert(gateway, upstreams) -> None:
    """No SNI at all is not an unrecognized name: the alert is OpenSSL's handshake failure."""
    setup_catalog(gateway, {"billing": [upstreams().port]})
    await gateway.start()
    cert, key, root = gateway.client_files("web")
    with pytest.raises(HandshakeRefusedError) as refused:
        await in_thread(tls_connect, gateway.port, None, cert, key, root)
    assert "UNRECOGNIZED_NAME" not in str(refused.value.error)
    assert "HANDSHAKE_FAILURE" in str(refused.value.error), refused.value
