"""Which context a terminating connection starts on: the route of its first ClientHello.

A TLS session belongs to the context it was created on: its session ID cache and
ticket keys are those of the connection's *initial* context, and its session ID
context (checked by OpenSSL before it resumes anything) is the initial one's. In
TLS 1.2 a resumed session also keeps the server name of the handshake that
created it — OpenSSL reports that name, not the one the client sends now.

So a connection does not start on one shared context: the bytes of its first
ClientHello are gathered (bounded by :class:`ClientHelloParser`), its server name
picks the route's own context (one per SNI, with its own session ID context), and
only then does OpenSSL see them. A session made for ``billing`` can then only be
resumed by a ClientHello naming ``billing``; one naming anything else finds no
session it may resume and gets a full handshake, routed and logged by its own
name. A hello that does not parse, or names no route, starts on the base context
(no certificate), as before. The servername callback still decides (it runs for
every ClientHello, the second one after a HelloRetryRequest included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from OpenSSL import SSL

from gwcore.policy.clienthello import NEED_MORE, ClientHello, ClientHelloParser
from gwcore.policy.sni import normalize_sni

if TYPE_CHECKING:
    from gwcore.net.tls import ServerTLS


class FirstHello:
    """The bytes a client sent until its first ClientHello is complete (or unusable)."""

    __slots__ = ("_chunks", "_parser")

    def __init__(self) -> None:
        self._parser = ClientHelloParser()
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> bool:
        """Keep ``data``; True once the hello is whole or cannot become one."""
        self._chunks.append(data)
        return self._parser.feed(data) is not NEED_MORE

    def start(self, material: ServerTLS, app: object) -> tuple[SSL.Connection, bytes]:
        """An accepting OpenSSL connection on the hello's route context (or the base
        one), and every byte gathered so far, to be fed to it."""
        result = self._parser.result
        sni = normalize_sni(result.server_name) if isinstance(result, ClientHello) else None
        ctx = (material.context_for(sni) if sni else None) or material.base
        tls = SSL.Connection(ctx, None)
        tls.set_accept_state()
        tls.set_app_data(app)
        data = b"".join(self._chunks)
        self._chunks.clear()
        return tls, data
