"""A TLS 1.3 client that makes the server send a HelloRetryRequest (tlslite-ng, an
implementation we did not write): its only key share is for brainpoolP256r1tls13,
which OpenSSL 3.0 does not implement, while its supported groups also list x25519,
so the server asks for a second ClientHello. The second hello may carry another
server name than the first (or none) — a client we must not trust to repeat it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
from tlslite.constants import ExtensionType, HandshakeType
from tlslite.extensions import SNIExtension

_KEEP = object()


class HrrClient:
    """Connect, handshake with an HRR, and read; records what the server did."""

    def __init__(self, files: tuple[Path, Path, Path]) -> None:
        cert, key, _ = files
        self.chain = X509CertChain()
        self.chain.parsePemList(cert.read_text())
        self.key = parsePEMKey(key.read_text(), private=True)
        self.hellos: list[bytes | None] = []  # the server name of each ClientHello sent
        self.error: Exception | None = None

    def settings(self) -> HandshakeSettings:
        settings = HandshakeSettings()
        settings.minVersion = (3, 4)
        settings.maxVersion = (3, 4)
        settings.eccCurves = ["brainpoolP256r1tls13", "x25519"]
        settings.keyShares = ["brainpoolP256r1tls13"]
        # tlslite-ng 0.8 compresses its Certificate (RFC 8879) even unasked; OpenSSL
        # 3.0 does not know the message.
        settings.certificate_compression_send = []
        settings.certificate_compression_receive = []
        return settings

    def call(self, port: int, first_sni: str, second_sni: Any = _KEEP) -> bytes:
        """Handshake sending ``first_sni`` then, after the HRR, ``second_sni`` (``None``:
        no server_name at all); send a byte and read to the end. ``b""`` if refused."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = TLSConnection(sock)
        original = conn._sendMsg

        def send(msg: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(msg, "handshakeType", None) == HandshakeType.client_hello:
                if self.hellos and second_sni is not _KEEP:
                    _set_server_name(msg, second_sni)
                self.hellos.append(msg.server_name or None)
            return original(msg, *args, **kwargs)

        conn._sendMsg = send  # type: ignore[method-assign]
        try:
            conn.handshakeClientCert(
                self.chain, self.key, settings=self.settings(), serverName=first_sni
            )
            conn.write(b"x")
            data = b""
            while chunk := conn.read():
                data += chunk
            return data
        except Exception as e:  # any TLS alert or closed socket: the server refused
            self.error = e
            return b""
        finally:
            sock.close()


def _set_server_name(hello: Any, name: str | None) -> None:
    hello.extensions = [e for e in hello.extensions if e.extType != ExtensionType.server_name]
    if name is not None:
        # Before pre_shared_key, which must stay last.
        hello.extensions.insert(0, SNIExtension().create(name.encode("ascii")))
