"""A terminating site behind a load balancer that speaks the PROXY protocol.

With ``proxy_protocol = true`` every connection must start with a PROXY v1 or v2
header (:mod:`gwcore.policy.proxy_protocol`); the client address it names replaces
the load balancer's in the connection's :class:`~gwcore.contract.events.ConnectionInfo`, so
authorization (``client_address``), addons and the access log (``client``) see the
real client. The header must arrive within ``handshake_timeout``; a connection
without a valid one is closed (handshake failure reason ``proxy_protocol``, one log
line, counted in ``tgw_tls_handshake_errors_total``). A ``LOCAL`` header (the load
balancer's own health check) keeps the load balancer's address.

Only enable it when every client of the listener is the load balancer: the header
is believed as sent.

With ``upstream_proxy_protocol = true`` a site sends a PROXY v2 header to plain-TCP
upstreams (:func:`upstream_factory`): the client address, the gateway's listener,
and the caller's SPIFFE ID in TLV type ``0xE0`` (``TLV_SPIFFE_ID``), so the
external service can log who called.
"""

from __future__ import annotations

from typing import Any

from gwcore.net.splice import State, UpstreamFactory, UpstreamProtocol
from gwcore.net.terminator import DownstreamFactory, DownstreamProtocol, log
from gwcore.policy.proxy_protocol import (
    MAX_HEADER,
    TLV_SPIFFE_ID,
    ProxyProtocolError,
    build_v2,
    parse,
)


class ProxiedDownstreamProtocol(DownstreamProtocol):
    """A :class:`DownstreamProtocol` that first reads the PROXY header."""

    proxy_header: Any = None
    _accepted = False
    _header_buffer = b""

    def connectionMade(self) -> None:
        if not self.accept():
            return
        self._accepted = True  # counted once; the TLS start below must not re-admit
        self._deadline = self.site.reactor.callLater(
            self.site.config.handshake_timeout, self._handshake_expired
        )

    def accept(self) -> bool:
        return True if self._accepted else super().accept()

    def dataReceived(self, data: bytes) -> None:
        if self.proxy_header is not None:
            super().dataReceived(data)
            return
        if self.info is None or self.lost:
            return
        buffer = self._header_buffer + data
        try:
            header, used = parse(buffer[:MAX_HEADER])
        except ProxyProtocolError as e:
            self._bad_header(str(e))
            return
        if header is None:
            if len(buffer) >= MAX_HEADER:
                self._bad_header("header too long")
                return
            self._header_buffer = buffer
            return
        self._header_buffer = b""
        self.proxy_header = header
        if header.source is not None:
            self.info.client_address, self.info.client_port = header.source
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        DownstreamProtocol.connectionMade(self)  # hooks, TLS: now with the real client
        rest = buffer[used:]
        if rest and self.state is not State.CLOSED and not self.lost:
            super().dataReceived(rest)  # the start of the ClientHello, usually

    def _bad_header(self, problem: str) -> None:
        log.info(
            "PROXY protocol header refused from {client}: {problem}",
            client=self.client_label(),
            problem=problem,
        )
        self.site.metrics.handshake_errors.labels(
            site=self.site.name, reason="proxy_protocol"
        ).inc()
        self._close("handshake:proxy_protocol", abort=True)


class ProxiedDownstreamFactory(DownstreamFactory):
    """Builds :class:`ProxiedDownstreamProtocol` connections."""

    def buildProtocol(self, addr: Any) -> DownstreamProtocol:
        proto = ProxiedDownstreamProtocol(self.site)
        proto.factory = self
        if self._on_build is not None:
            self._on_build(proto)
        return proto


# --- PROXY v2 towards a plain-TCP upstream ----------------------------------------------


class _HeaderFirst(UpstreamProtocol):
    """An upstream connection whose first bytes are a PROXY v2 header."""

    def __init__(self, header: bytes) -> None:
        super().__init__()
        self.header = header

    def connectionMade(self) -> None:
        self.transport.write(self.header)
        super().connectionMade()


class ProxyHeaderFactory(UpstreamFactory):
    """Builds upstream connections that start with ``header``."""

    def __init__(self, downstream: Any, header: bytes) -> None:
        super().__init__(downstream)
        self.header = header

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return _HeaderFirst(self.header)


def caller_header(conn: Any, gateway: tuple[str, int] | None) -> bytes:
    """The PROXY v2 header for ``conn``'s upstream: the client (as the access log has
    it), the gateway's listener as destination, and the caller's SPIFFE ID in a
    :data:`~gwcore.policy.proxy_protocol.TLV_SPIFFE_ID` TLV."""
    tlvs = ((TLV_SPIFFE_ID, conn.identity.uri.encode()),) if conn.identity is not None else ()
    info = conn.info
    try:
        return build_v2((info.client_address, info.client_port), gateway, tlvs)
    except ValueError:  # not an IP address (a unix socket): a LOCAL header, TLVs kept
        return build_v2(None, None, tlvs)


def upstream_factory(site: Any, conn: Any, strategy: Any) -> UpstreamFactory:
    """The factory of ``conn``'s upstream connection: with ``upstream_proxy_protocol``
    and a plain-TCP destination, one that sends a PROXY v2 header first (a TLS
    destination gets none: the header would have to precede the TLS handshake, which
    the TLS strategy owns)."""
    if site.config.upstream_proxy_protocol and getattr(strategy, "name", "") == "plain":
        return ProxyHeaderFactory(conn, caller_header(conn, site.listening_address()))
    return UpstreamFactory(conn)
