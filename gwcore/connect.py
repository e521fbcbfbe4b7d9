"""``tgw connect``: a local client proxy, like ``consul connect proxy -upstream``.

Plain TCP in on ``--listen``; for each connection, mTLS out to the gateway with
the upstream's Consul SNI, presenting a leaf for ``--service``. The gateway must
present the upstream's SPIFFE identity (checked after the chain verifies), as a
mesh sidecar would check it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from gwcore.pki import uri_sans
from gwcore.policy.config import ConfigError, GatewayConfig, SiteConfig, load_config
from gwcore.policy.model import ServiceName, SpiffeID
from gwcore.policy.sni import service_sni
from gwcore.providers import LeafCertificate

log = Logger(namespace="tgw.connect")


@implementer(IOpenSSLClientConnectionCreator)
class MeshClientTLS:
    """Client-side TLS for one upstream: our leaf, the mesh roots, the Consul SNI."""

    def __init__(self, leaf: LeafCertificate, roots: list[x509.Certificate], sni: str) -> None:
        self.sni = sni
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(leaf.certificate)
        ctx.use_privatekey(leaf.key)  # type: ignore[arg-type]
        for extra in leaf.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        store = ctx.get_cert_store()
        assert store is not None
        for root in roots:
            store.add_cert(crypto.X509.from_cryptography(root))
        ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errnum, depth, ok: bool(ok))
        self.context = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(tlsProtocol)
        conn.set_tlsext_host_name(self.sni.encode("ascii"))
        return conn


@implementer(IHandshakeListener)
class _GatewaySide(Protocol):
    def __init__(self, client: _ClientSide, expected_uri: str) -> None:
        self.client = client
        self.expected_uri = expected_uri

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()
        uris = uri_sans(cert.to_cryptography()) if cert is not None else []
        if uris != [self.expected_uri]:
            log.error(
                "gateway presented {uris}, expected {expected}; closing",
                uris=uris,
                expected=self.expected_uri,
            )
            self.transport.abortConnection()
            self.client.transport.loseConnection()
            return
        self.client.attach(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.client.gateway = None
        self.client.transport.loseConnection()


class _ClientSide(Protocol):
    gateway: _GatewaySide | None = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        factory: ConnectFactory = self.factory
        d = factory.gateway_endpoint.connect(_OneShot(_GatewaySide(self, factory.expected_uri)))
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        log.error("cannot reach the gateway: {e}", e=failure.getErrorMessage())
        self.transport.loseConnection()

    def attach(self, gateway: _GatewaySide) -> None:
        self.gateway = gateway
        gateway.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(gateway.transport, True)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.gateway is not None:
            self.gateway.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.gateway is not None:
            self.gateway.transport.loseConnection()


class _OneShot(Factory):
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class ConnectFactory(Factory):
    protocol = _ClientSide
    noisy = False

    def __init__(self, gateway_endpoint: Any, expected_uri: str) -> None:
        self.gateway_endpoint = gateway_endpoint
        self.expected_uri = expected_uri


def endpoint_address(listen: str) -> tuple[str, int]:
    """The (host, port) a client reaches a ``tcp:``/``tcp6:`` server endpoint string at."""
    # Endpoint strings escape colons inside values as "\\:" (IPv6 addresses).
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", listen)]
    kind = parts[0]
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"cannot derive a client endpoint from {listen!r}; pass --gateway")
    port = None
    host = "::1" if kind == "tcp6" else "127.0.0.1"
    for part in parts[1:]:
        if "=" in part:
            k, v = part.split("=", 1)
            if k == "port":
                port = v
            elif k == "interface" and v not in ("", "0.0.0.0", "::"):
                host = v
        elif port is None:
            port = part
    if port is None or not re.fullmatch(r"\d+", port):
        raise ValueError(f"no port in {listen!r}; pass --gateway")
    return host, int(port)


def gateway_client_endpoint(listen: str) -> str:
    """Turn a site's server endpoint string into a client one for the same address."""
    host, port = endpoint_address(listen)
    escaped = host.replace(":", r"\:")
    return f"tcp:host={escaped}:port={port}"


def _material(
    args: argparse.Namespace,
    config: GatewayConfig,
    site: SiteConfig,
    datacenter: str,
    trust_domain: str,
) -> tuple[LeafCertificate, list[x509.Certificate]]:
    from gwcore import pki

    if args.cert or args.key or args.ca:
        if not (args.cert and args.key and args.ca):
            raise ValueError("--cert, --key and --ca go together")
        leaf = pki.load_leaf(Path(args.cert).read_bytes(), Path(args.key).read_bytes())
        return leaf, pki.load_certificates(Path(args.ca).read_bytes())
    from gwcore.plugins.builtin_ca import default_ca_dir, load_or_create_ca

    section = site.plugin_section("builtin_ca")
    ca_dir = Path(section["ca_dir"]) if "ca_dir" in section else None
    if ca_dir is not None and not ca_dir.is_absolute():
        ca_dir = site.base_dir / ca_dir
    ca_dir = ca_dir or default_ca_dir(config.state_dir, trust_domain)
    ca_cert, ca_key = load_or_create_ca(ca_dir, trust_domain)
    leaf = pki.service_leaf(ca_cert, ca_key, ServiceName(args.service), datacenter, trust_domain)
    return leaf, [ca_cert]


def run_connect(args: argparse.Namespace, reactor: Any = None) -> int:
    from twisted.internet.endpoints import clientFromString, serverFromString, wrapClientTLS

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        site = config.site(args.site) if args.site else config.sites[0]
    except KeyError:
        names = ", ".join(s.key for s in config.sites)
        print(
            f"tgw connect: no site {args.site!r} in {args.config} (sites: {names})", file=sys.stderr
        )
        return 1
    datacenter = args.datacenter or site.datacenter
    trust_domain = (args.trust_domain or site.trust_domain).lower()
    try:
        leaf, roots = _material(args, config, site, datacenter, trust_domain)
        gateway = args.gateway or gateway_client_endpoint(site.listen)
    except (ValueError, OSError) as e:
        print(f"tgw connect: {e}", file=sys.stderr)
        return 1
    upstream = ServiceName(args.upstream)
    sni = service_sni(upstream, datacenter, trust_domain)
    expected = SpiffeID(trust_domain, upstream.namespace, datacenter, upstream.name).uri
    endpoint = wrapClientTLS(MeshClientTLS(leaf, roots, sni), clientFromString(reactor, gateway))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    def listening(port: Any) -> None:
        host = port.getHost()
        print(
            f"tgw connect: {args.service} -> {args.upstream} via {gateway} (SNI {sni}); "
            f"listening on {host.host}:{host.port}",
            flush=True,
        )

    status = [0]

    def failed(failure: Any) -> None:
        print(
            f"tgw connect: cannot listen on {args.listen}: {failure.getErrorMessage()}",
            file=sys.stderr,
        )
        status[0] = 1
        reactor.stop()

    d = serverFromString(reactor, args.listen).listen(ConnectFactory(endpoint, expected))
    d.addCallbacks(listening, failed)
    reactor.run()
    return status[0]
