"""``tgw connect``: a local client proxy, like ``consul connect proxy -upstream``.

Plain TCP in on ``--listen``; for each connection, mTLS out to the gateway with
the upstream's Consul SNI, presenting a leaf for ``--service``. The gateway must
present the upstream's SPIFFE identity, checked during certificate verification
as the gateway's own mesh-gateway hop checks it (a wrong identity gets a
``bad_certificate`` alert and never our certificate).

The two sides are spliced as the gateway splices (:class:`~gwcore.net.splice.SplicedClient`):
flow control both ways, and half-closes passed through — the client's FIN becomes
``close_notify`` then FIN towards the gateway; the gateway's ``close_notify`` becomes
a FIN to the client — while the other direction goes on.

The leaf comes from a certificate provider (:class:`LeafSource`): the built-in CA,
which mints it, or ``--cert``/``--key``/``--ca`` files, which are read again. It is
renewed from that same provider once half its lifetime has passed, so a proxy that
runs longer than the leaf's validity keeps connecting.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from gwcore.cli.connect_errors import explain_failure
from gwcore.contract.pki import uri_sans
from gwcore.contract.providers import LeafCertificate
from gwcore.net.splice import SplicedClient, State
from gwcore.net.upstream import UpstreamConnectError
from gwcore.net.upstream_tls import TLSUpstreamProtocol, Verification, mesh_client_context
from gwcore.policy.config import ConfigError, GatewayConfig, SiteConfig, load_config
from gwcore.policy.model import ServiceName, SpiffeID
from gwcore.policy.sni import service_sni

__all__ = ["ConnectFactory", "LeafSource", "endpoint_address", "run_connect", "uri_sans"]

log = Logger(namespace="tgw.connect")

RENEW_AFTER = 0.5
"""Fraction of the leaf's lifetime after which it is renewed (at the next connection)."""
RETRY_AFTER = 60.0
"""Seconds before asking again a provider whose renewed leaf was not fresher."""
CONNECT_TIMEOUT = 10.0
"""Seconds for the TCP connection and, again, for the TLS handshake with the gateway."""

Material = tuple[LeafCertificate, list[x509.Certificate]]


def upstream_sni(
    site: SiteConfig,
    upstream: ServiceName,
    datacenter: str,
    trust_domain: str,
    subset: str | None = None,
) -> str:
    """The SNI to dial: ``subset``'s (``--subset``), else the resolver's ``DefaultSubset``
    as Consul's sidecars dial it, else the service's own."""
    if subset is None:
        subset = default_subset(site, upstream)
    return service_sni(upstream, datacenter, trust_domain, subset or None)


def default_subset(site: SiteConfig, upstream: ServiceName) -> str:
    """The ``DefaultSubset`` of ``upstream``'s service-resolver in the site's file
    catalog ("" if none): a calling sidecar's discovery chain dials that subset's SNI."""
    from gwcore.net.filewatch import expand
    from gwcore.plugins import file_catalog
    from gwcore.policy.resolver_entry import merge_resolvers

    if file_catalog.NAME not in site.plugins:
        return ""
    settings, problems = file_catalog.read_settings(site)
    if problems:
        return ""
    paths = expand([site.base_dir / p for p in settings.paths], file_catalog.PATTERN)
    groups = [file_catalog.read_catalog_file(path)[1] for path in paths]
    entry = merge_resolvers(groups)[0].get(upstream)
    return entry.default_subset if entry is not None else ""


class LeafSource:
    """The proxy's client TLS context, from ``load`` (its certificate provider), renewed.

    ``load`` returns a leaf and the trust roots; it is called at the first connection
    and again at the first connection after :data:`RENEW_AFTER` of the leaf's lifetime
    (``clock`` says when: the reactor's ``seconds``). A provider that fails, or gives no
    fresher leaf, is asked again :data:`RETRY_AFTER` seconds later; meanwhile the
    current leaf is used (it is still valid: renewal starts half-way).
    """

    def __init__(self, load: Callable[[], Material], clock: Callable[[], float]) -> None:
        self._load = load
        self._clock = clock
        self._leaf: LeafCertificate | None = None
        self._context: SSL.Context | None = None
        self._renew_at = 0.0
        self.renewals = 0  # leaves loaded after the first (for tests and the log)

    @property
    def leaf(self) -> LeafCertificate | None:
        return self._leaf

    def context(self) -> SSL.Context:
        """The context to use now (renewing the leaf first when it is due)."""
        now = self._clock()
        if self._context is not None and now < self._renew_at:
            return self._context
        try:
            leaf, roots = self._load()
            context = mesh_client_context(leaf, roots)
        except (OSError, ValueError, SSL.Error) as e:
            if self._context is None:
                raise
            log.error("cannot renew the leaf ({e}); keeping the current one", e=e)
            self._renew_at = now + RETRY_AFTER
            return self._context
        current = self._leaf
        # Another certificate valid at least as long (re-read files may be unchanged).
        fresher = current is None or (
            leaf.fingerprint != current.fingerprint and leaf.not_after >= current.not_after
        )
        if self._leaf is not None and fresher:
            self.renewals += 1
            log.info("leaf renewed; valid until {t:.0f}", t=leaf.not_after)
        if fresher:
            self._leaf, self._context = leaf, context
        not_before = self._leaf.certificate.not_valid_before_utc.timestamp()
        renew_at = not_before + RENEW_AFTER * (self._leaf.not_after - not_before)
        self._renew_at = renew_at if renew_at > now else now + RETRY_AFTER
        assert self._context is not None
        return self._context


class _NoSite:
    """The splice reports a finished connection to its site; the proxy has none."""

    name = "connect"

    def connection_closed(self, connection: Any) -> None:
        return None


_NO_SITE = _NoSite()


@implementer(IHalfCloseableProtocol)
class _ClientSide(SplicedClient, Protocol):
    """One local client, spliced to its own mTLS connection to the gateway."""

    factory: ConnectFactory

    def connectionMade(self) -> None:
        self._init_splice()
        self.site = _NO_SITE
        self.state = State.CONNECTING
        self.bytes_up = self.bytes_down = 0
        self.transport.pauseProducing()  # nothing is read until the gateway is verified
        pending = Deferred.fromCoroutine(self._connect())
        self._pending = pending
        pending.addErrback(self._failed)

    async def _connect(self) -> None:
        factory = self.factory
        gateway = TLSUpstreamProtocol(
            factory.leaf_source.context(), factory.sni, Verification(factory.expected_uri)
        )
        connecting = factory.gateway_endpoint.connect(_OneShot(gateway))
        connecting.addTimeout(CONNECT_TIMEOUT, factory.reactor)
        await connecting
        ready = gateway.ready
        ready.addTimeout(CONNECT_TIMEOUT, factory.reactor)
        try:
            await ready
        except UpstreamConnectError:
            raise  # the protocol closed it (after sending its alert)
        except BaseException:
            gateway.transport.abortConnection()
            raise
        self._pending = None
        if self.lost:
            gateway.transport.loseConnection()
            return
        self.upstream = gateway
        gateway.downstream = self
        self.state = State.SPLICING
        self._splice(gateway, [])

    def _failed(self, failure: Any) -> None:
        self._pending = None
        if failure.check(CancelledError):
            return  # the client left while we were connecting
        reason = getattr(failure.value, "reason", None)
        why = f"{reason}: " if reason else ""
        factory = self.factory
        text = explain_failure(
            failure.getErrorMessage(), sni=factory.sni, gateway=str(factory.gateway_endpoint)
        )
        log.error("cannot reach the gateway: {why}{e}", why=why, e=text)
        if not self.lost:
            self.transport.loseConnection()

    # the client's bytes and end of stream ----------------------------------------

    def dataReceived(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and not upstream.lost:
            self.bytes_up += len(data)
            upstream.send(data)

    def readConnectionLost(self) -> None:
        self._client_finished_writing()

    # the gateway side (TLSUpstreamProtocol's downstream) -------------------------

    def send_to_client(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self.transport.write(data)

    def upstream_eof(self) -> None:
        self._note_silent_close()
        super().upstream_eof()

    def upstream_lost(self) -> None:
        self._note_silent_close()
        super().upstream_lost()

    def _note_silent_close(self) -> None:
        """The gateway ended the connection without a byte: say what that usually means."""
        if self.bytes_down == 0 and not self.upstream_done and self.upstream is not None:
            log.warn(
                "the gateway closed the connection to {upstream} before sending anything "
                "(denied by its authorization, no healthy endpoint, or the service closed at "
                "once) — see its access log",
                upstream=self.factory.sni,
            )

    def upstream_tls_failed(self, reason: str, detail: str) -> None:
        log.error("TLS with the gateway failed ({reason}): {detail}", reason=reason, detail=detail)


class _OneShot(Factory):
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class ConnectFactory(Factory):
    """Local clients in; per client, mTLS to ``gateway_endpoint`` (a Twisted client
    endpoint for the gateway's TCP address) with ``sni``, expecting ``expected_uri``."""

    protocol = _ClientSide
    noisy = False

    def __init__(
        self,
        gateway_endpoint: Any,
        leaf_source: LeafSource,
        sni: str,
        expected_uri: str,
        reactor: Any,
    ) -> None:
        self.gateway_endpoint = gateway_endpoint
        self.leaf_source = leaf_source
        self.sni = sni
        self.expected_uri = expected_uri
        self.reactor = reactor


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


def certificate_provider(
    args: argparse.Namespace,
    config: GatewayConfig,
    site: SiteConfig,
    datacenter: str,
    trust_domain: str,
) -> Callable[[], Material]:
    """What :class:`LeafSource` loads from: ``--cert``/``--key``/``--ca`` read again each
    time (rotated by whoever writes them), else a fresh leaf for ``--service`` from the
    built-in CA the gateway uses."""
    from gwcore.contract import pki

    if args.cert or args.key or args.ca:
        if not (args.cert and args.key and args.ca):
            raise ValueError("--cert, --key and --ca go together")
        cert, key, ca = Path(args.cert), Path(args.key), Path(args.ca)

        def from_files() -> Material:
            leaf = pki.load_leaf(cert.read_bytes(), key.read_bytes())
            return leaf, pki.load_certificates(ca.read_bytes())

        return from_files
    from gwcore.plugins.builtin_ca import CA_FILE, default_ca_dir, load_or_create_ca

    section = site.plugin_section("builtin_ca")
    ca_dir = Path(section["ca_dir"]) if "ca_dir" in section else None
    if ca_dir is not None and not ca_dir.is_absolute():
        ca_dir = site.base_dir / ca_dir
    ca_dir = ca_dir or default_ca_dir(config.state_dir, trust_domain)
    refusal = _new_ca_refusal(args, site, trust_domain, ca_dir / CA_FILE)
    if refusal:
        raise ValueError(refusal)
    service = ServiceName(args.service)

    def from_builtin_ca() -> Material:
        ca_cert, ca_key = load_or_create_ca(ca_dir, trust_domain)
        leaf = pki.service_leaf(ca_cert, ca_key, service, datacenter, trust_domain)
        return leaf, [ca_cert]

    return from_builtin_ca


def _new_ca_refusal(
    args: argparse.Namespace, site: SiteConfig, trust_domain: str, ca_file: Path
) -> str:
    """Why creating a built-in CA here would be a mistake ("" if it is what the gateway
    would do too, or ``--create-ca`` asks for it): a CA nobody trusts would only make
    every connection fail later."""
    if ca_file.exists() or getattr(args, "create_ca", False):
        return ""
    if trust_domain != site.trust_domain:
        return (
            f"no built-in CA for trust domain {trust_domain} ({ca_file} does not exist) and the "
            f"site's is {site.trust_domain}: a new CA would not be trusted by the gateway; "
            f"check --trust-domain, or pass --create-ca to create one anyway"
        )
    if "builtin_ca" not in site.plugins:
        return (
            f"site {site.key} does not use builtin_ca and {ca_file} does not exist: pass "
            f"--cert, --key and --ca, or --create-ca to create a CA anyway"
        )
    return ""


def run_connect(args: argparse.Namespace, reactor: Any = None) -> int:
    from twisted.internet.endpoints import clientFromString, serverFromString

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
        leaf_source = LeafSource(
            certificate_provider(args, config, site, datacenter, trust_domain), reactor.seconds
        )
        leaf_source.context()  # unusable material is reported now, not per connection
        gateway = args.gateway or gateway_client_endpoint(site.listen)
    except (ValueError, OSError, SSL.Error) as e:
        print(f"tgw connect: {e}", file=sys.stderr)
        return 1
    upstream = ServiceName(args.upstream)
    sni = upstream_sni(site, upstream, datacenter, trust_domain, getattr(args, "subset", None))
    expected = SpiffeID(trust_domain, upstream.namespace, datacenter, upstream.name).uri
    endpoint = clientFromString(reactor, gateway)
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

    factory = ConnectFactory(endpoint, leaf_source, sni, expected, reactor)
    d = serverFromString(reactor, args.listen).listen(factory)
    d.addCallbacks(listening, failed)
    reactor.run()
    return status[0]
