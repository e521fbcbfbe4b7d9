"""Interfaces that provider plugins implement, and the site context they are built with.

A provider hook (see :mod:`gwcore.contract.hookspecs`) returns objects meeting one of these
protocols. Methods that do I/O return a Twisted ``Deferred`` (or ``None`` when they
finished synchronously); the site wraps every call with ``maybeDeferred`` so either
is fine. Nothing here is called per chunk of data; ``leaf``, ``trust_roots`` and
``authorize`` are called at most once per connection and must be cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography import x509

from gwcore.policy.http_facts import DEFAULT_MESH_HTTP, HttpRequestFacts, MeshHttp
from gwcore.policy.model import (
    CatalogSnapshot,
    Decision,
    Destination,
    Endpoint,
    Intention,
    ServiceName,
    SpiffeID,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorCore
    from twisted.logger import Logger

    from gwcore.contract.metrics import GatewayMetrics
    from gwcore.policy.config import SiteConfig


@dataclass(frozen=True, slots=True)
class TrustRoot:
    """A trust root and the trust domain it is *configured* to vouch for.

    The domain comes from configuration (or, for Consul, from the API's
    ``TrustDomain``), never from the certificate: a root vouches only for client
    identities of ``trust_domain``. A root whose ``spiffe://`` URI SAN names another
    trust domain is refused (see docs/security.md). ``trust_domain`` is compared
    lower-case.
    """

    certificate: x509.Certificate
    trust_domain: str


@dataclass(frozen=True, slots=True)
class LeafCertificate:
    """A certificate chain (leaf first) and its private key."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> float:
        return self.chain[0].not_valid_after_utc.timestamp()

    @property
    def fingerprint(self) -> bytes:
        """Identifies this material; contexts are cached per fingerprint."""
        from cryptography.hazmat.primitives import hashes

        return self.chain[0].fingerprint(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """How fresh a provider's data is, for ``/ready`` and the staleness metrics."""

    last_success: float | None = None
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.last_success is not None and self.last_error is None


@dataclass(frozen=True, slots=True)
class CatalogView:
    """The site's merged catalog: what every source said, combined in stack order."""

    destinations: tuple[Destination, ...]
    intentions: tuple[Intention, ...]
    version: str
    mesh_gateways: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    """Mesh gateway endpoints per datacenter (catalog first, then configured ones)."""
    mesh_http: MeshHttp = DEFAULT_MESH_HTTP
    """Consul's ``mesh`` entry HTTP options (the first source in stack order that has one)."""


@dataclass(frozen=True, slots=True)
class AuthzRequest:
    """Everything an authorization engine may decide on (one per connection)."""

    site: str
    gateway_name: str
    datacenter: str
    source: SpiffeID
    destination: Destination
    sni: str
    client_address: str
    client_port: int
    gateway_address: str
    """The connection's local address (the address the client reached, never the
    wildcard ``0.0.0.0`` a listener may be bound to)."""
    gateway_port: int
    requested_server_name: str = ""
    """The SNI exactly as the client sent it (``sni`` is normalised: lower case, no
    trailing dot); empty when not known (``tgw explain``)."""
    peer_certificate: bytes = b""
    """The client's certificate (its leaf), DER; empty unless an engine of the site sets
    ``wants_peer_certificate`` (or when not known, as in ``tgw explain``)."""
    http: HttpRequestFacts | None = None
    """The request being decided at an L7 destination (``service-defaults`` protocol
    http, http2 or grpc): one decision per request. ``None`` for an L4 connection."""


class SiteContext(Protocol):
    """What a provider hook receives: the site it is being built for.

    Plugins read their own section with :meth:`plugin_config` (the section named
    like the plugin in ``[sites.NAME.<plugin>]``), resolve relative paths against
    the config file with :meth:`resolve_path`, and schedule work on ``reactor``.
    """

    name: str
    config: SiteConfig
    reactor: IReactorCore
    metrics: GatewayMetrics
    log: Logger
    state_dir: Path

    def plugin_config(self, plugin: str) -> Mapping[str, Any]: ...

    def resolve_path(self, path: str) -> Path: ...

    def catalog_view(self) -> CatalogView: ...

    def subscribe_catalog(self, callback: Callable[[CatalogView], None]) -> None: ...

    def listening_address(self) -> tuple[str, int] | None:
        """The (host, port) the site listens on, once it does (``None`` before)."""
        ...

    def gateway_leaf(self) -> LeafCertificate | None:
        """The gateway's own leaf: its certificate providers' leaf for the service named
        like the gateway (``config.name``), i.e. ``spiffe://<td>/ns/default/dc/<dc>/svc/<name>``.
        Used when the gateway itself is a client of the mesh (the mesh-gateway hop)."""
        ...

    def trust_roots(self) -> Sequence[x509.Certificate]:
        """Every trust root of the site's certificate providers (deduplicated)."""
        ...

    def trust_bundles(self) -> Mapping[str, Sequence[x509.Certificate]]:
        """The trust roots by the trust domain each is configured for: verify a peer
        claiming an identity of domain ``td`` against ``trust_bundles()[td]`` only."""
        ...


@runtime_checkable
class CatalogSource(Protocol):
    """Watches a backend and publishes complete snapshots.

    ``start`` calls ``publish`` with every new snapshot (the whole content, never a
    delta). The Deferred it returns fires after the first snapshot was published, or
    after the first attempt failed; the site waits for it (bounded) before it
    listens. A source whose backend fails keeps its last good snapshot, reports the
    error in :meth:`health` and never publishes an empty snapshot because of it.
    """

    name: str

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> Deferred[None] | None: ...

    def stop(self) -> Deferred[None] | None: ...

    def health(self) -> SourceHealth: ...


@runtime_checkable
class CertificateProvider(Protocol):
    """Supplies trust roots and one leaf per destination, and pushes rotations.

    ``prepare`` is called with the services of a route table before it goes live;
    the provider obtains leaves for them (the Deferred fires when they are ready).
    ``leaf`` and ``trust_roots`` answer from memory. ``changed`` (given to
    ``start``) is called after any leaf or root changed, so new handshakes use new
    material; established connections are never touched.
    """

    name: str

    def start(self, changed: Callable[[], None]) -> Deferred[None] | None: ...

    def stop(self) -> Deferred[None] | None: ...

    def prepare(self, services: Collection[ServiceName]) -> Deferred[None] | None: ...

    def leaf(self, service: ServiceName) -> LeafCertificate | None: ...

    def trust_roots(self) -> Sequence[TrustRoot]:
        """Each root with the trust domain it is configured for. A bare
        ``x509.Certificate`` (the contract of 0.1) still counts as a root of the
        site's own trust domain, with a DeprecationWarning; support ends next release."""
        ...

    def health(self) -> SourceHealth: ...


@runtime_checkable
class AuthorizationEngine(Protocol):
    """Decides allow, deny or abstain for one connection.

    ``authorize`` returns a :class:`Decision` or a Deferred firing with one. Raising
    or failing is a deny (the site fails closed). ``policy_version`` changes when
    the policy does; ``changed`` (given to ``start``) is called after such a change
    so the site can re-check open connections.

    Optional: ``wants_peer_certificate`` (default false). When any engine of the site
    sets it, ``AuthzRequest.peer_certificate`` carries the client's certificate;
    otherwise it is left empty, so no site pays for copying it.
    """

    name: str
    policy_version: str

    def start(self, changed: Callable[[], None]) -> Deferred[None] | None: ...

    def stop(self) -> Deferred[None] | None: ...

    def authorize(self, request: AuthzRequest) -> Decision | Deferred[Decision]: ...


@runtime_checkable
class UpstreamStrategy(Protocol):
    """Opens the connection from the gateway to one endpoint of a destination.

    The first strategy in the site's stack whose ``applies_to`` is true is used.
    ``connect`` fires with the connected protocol built by ``factory`` (after any
    TLS handshake the strategy performs), or fails with
    :class:`gwcore.net.upstream.UpstreamConnectError` naming a reason.

    Optional: ``endpoints_for(destination) -> Sequence[Endpoint]``. A strategy that
    dials other addresses than the destination's endpoints (the mesh-gateway hop dials
    mesh gateways) returns them here; the site balances, retries and ejects over
    those, and passes each to ``connect``.
    """

    name: str

    def applies_to(self, destination: Destination) -> bool: ...

    def connect(
        self,
        destination: Destination,
        endpoint: Endpoint,
        factory: IProtocolFactory,
        timeout: float,
    ) -> Deferred[IProtocol]: ...
