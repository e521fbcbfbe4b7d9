"""The values every layer and every plugin passes around.

Everything here is immutable and free of I/O: a catalog source builds these from
whatever backend it watches, the site merges them into a route table, and the
net layer reads them per connection without locking.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gwcore.policy.http_facts import MeshHttp
from gwcore.policy.l7_permissions import HttpPermission

DEFAULT_NAMESPACE = "default"
DEFAULT_PARTITION = "default"

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Health(enum.Enum):
    """Aggregated health of one service instance, as Consul computes it from its checks."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"

    @classmethod
    def worst(cls, statuses: list[str] | tuple[str, ...]) -> Health:
        """Fold check statuses: any critical wins, then any warning, else passing.

        Unknown status strings (Consul's "maintenance" is critical) count as critical,
        so a typo in a catalog file never makes an instance look healthier than it is.
        """
        result = cls.PASSING
        for status in statuses:
            if status == "passing":
                continue
            if status == "warning":
                result = cls.WARNING
                continue
            return cls.CRITICAL
        return result


@dataclass(frozen=True, slots=True)
class ServiceName:
    """A mesh service's full name. In Consul CE namespace and partition are always ``default``."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    partition: str = DEFAULT_PARTITION

    def __str__(self) -> str:
        if self.namespace == DEFAULT_NAMESPACE and self.partition == DEFAULT_PARTITION:
            return self.name
        return f"{self.partition}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of an external service: where to connect and how healthy it is."""

    address: str
    port: int
    health: Health = Health.PASSING
    weight: int = 1
    instance_id: str = ""
    node: str = ""
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)
    # Strict preference inside a health tier, lowest first (an SRV record's priority,
    # RFC 2782): a higher value is tried only when no lower one accepts. 0 for catalogs.
    priority: int = 0

    def __str__(self) -> str:
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


class TLSMode(enum.Enum):
    """How the gateway talks to the external service (Consul's rule: CAFile turns TLS on)."""

    PLAIN = "plain"
    TLS = "tls"
    MTLS = "mtls"


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """Consul's per-linked-service TLS origination fields, paths on the gateway's disk."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    sni: str = ""

    @property
    def mode(self) -> TLSMode:
        if not self.ca_file:
            return TLSMode.PLAIN
        if self.cert_file and self.key_file:
            return TLSMode.MTLS
        return TLSMode.TLS


PLAIN_TLS = UpstreamTLS()

# Envoy's defaults, which Consul leaves in place: ring 1024..8M entries, 2 choices.
DEFAULT_MIN_RING = 1024
DEFAULT_MAX_RING = 8 * 1024 * 1024
DEFAULT_CHOICES = 2


@dataclass(frozen=True, slots=True)
class HashPolicy:
    field: str = ""  # header | cookie | query_parameter; "" with source_ip
    field_value: str = ""
    source_ip: bool = False
    terminal: bool = False
    # CookieConfig: when set, a request without the cookie gets one generated (Envoy's
    # route hash policy ``ttl``): None = never generate, 0.0 = a session cookie.
    cookie_ttl: float | None = None
    cookie_path: str = ""


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """A service-resolver's ``LoadBalancer`` (:mod:`gwcore.policy.resolver_settings`)."""

    policy: str = ""
    min_ring: int = DEFAULT_MIN_RING
    max_ring: int = DEFAULT_MAX_RING
    choice_count: int = DEFAULT_CHOICES
    hash_policies: tuple[HashPolicy, ...] = ()

    @property
    def hashes_source_ip(self) -> bool:
        """L4 hashing key: the source address if a ``SourceIP`` policy is set, else the
        source identity."""
        return any(p.source_ip for p in self.hash_policies)


DEFAULT_LB = LoadBalancer()


@dataclass(frozen=True, slots=True)
class Destination:
    """A service the site represents (a Consul *linked service*) with its endpoints."""

    service: ServiceName
    datacenter: str
    endpoints: tuple[Endpoint, ...] = ()
    tls: UpstreamTLS = PLAIN_TLS
    protocol: str = "tcp"
    from_wildcard: bool = False
    lb_policy: str = ""  # "" = the site's lb_policy; else a gwcore.policy.balancing policy
    connect_timeout: float | None = None  # seconds; None = the site's connect_timeout
    # ring sizes, ChoiceCount, hash policies of the resolver's LoadBalancer
    load_balancer: LoadBalancer = DEFAULT_LB
    meta: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)
    # service-resolver subsets at a mesh site: (subset name, its endpoints), sorted by name
    subsets: tuple[tuple[str, tuple[Endpoint, ...]], ...] = ()
    # The subset this route serves (a terminating site's subset route), "" for the service
    subset: str = ""
    # A Consul destination (service-defaults Destination): its addresses, one route each
    egress: tuple[str, ...] = ()
    # service-resolver settings reported in /routes (DefaultSubset, Redirect, Failover,
    # LoadBalancer, RequestTimeout): decided by callers or by L7, not by an L4 route
    resolver: Mapping[str, object] = field(
        default_factory=lambda: _EMPTY, compare=False, hash=False
    )

    @property
    def name(self) -> str:
        return self.service.name


@dataclass(frozen=True, slots=True)
class Intention:
    """One source of a ``service-intentions`` config entry, flattened with its destination.

    ``permissions`` is non-empty for an L7 intention: per request the first matching
    permission decides; on an L4 connection such an intention matches but denies, as
    Consul's authorize endpoint does.
    """

    source: ServiceName
    destination: ServiceName
    action: str  # "allow" | "deny" | "" (L7)
    permissions: tuple[HttpPermission, ...] = ()
    """Compiled L7 permissions, in entry order (``l7_permissions.py``)."""
    description: str = ""
    origin: str = ""  # where it came from: a file path or an API index, for the decision reason
    # A source in a cluster peer, or any member of a sameness group: an identity tgw
    # cannot verify, so such an intention never matches a caller (intentions.py rule 6).
    source_peer: str = ""
    source_sameness_group: str = ""

    def __str__(self) -> str:
        src = f"{self.source.namespace}/{self.source.name}"
        if self.source_peer:
            src = f"peer {self.source_peer}: {src}"
        elif self.source_sameness_group:
            src = f"sameness group {self.source_sameness_group}: {src}"
        dst = f"{self.destination.namespace}/{self.destination.name}"
        return f"{src} => {dst} ({self.action or 'L7'})"


@dataclass(frozen=True, slots=True)
class MeshGateways:
    """The mesh gateways of one datacenter (Consul: ``mesh-gateway`` kind services)."""

    datacenter: str
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """What one catalog source knows right now.

    ``intentions`` is ``None`` when the source says nothing about intentions (so it
    does not erase what another source supplied); an empty tuple means "none".
    ``mesh_gateways`` lists the datacenters whose mesh gateways the source knows.
    ``version`` changes whenever the content does.
    """

    source: str
    destinations: tuple[Destination, ...] = ()
    intentions: tuple[Intention, ...] | None = None
    version: str = ""
    mesh_gateways: tuple[MeshGateways, ...] = ()
    mesh_http: MeshHttp | None = None
    """The HTTP part of Consul's ``mesh`` entry; ``None`` when the source has none."""


@dataclass(frozen=True, slots=True)
class SpiffeID:
    """A verified mesh identity, parsed from the one URI SAN of a client certificate.

    ``kind`` is ``"service"`` for ``spiffe://<td>[/ap/<p>]/ns/<ns>/dc/<dc>/svc/<name>`` and
    ``"mesh-gateway"`` for ``spiffe://<td>/gateway/mesh/dc/<dc>`` (``name`` is then empty).
    """

    trust_domain: str
    namespace: str
    datacenter: str
    name: str
    partition: str = DEFAULT_PARTITION
    kind: str = "service"

    @property
    def service(self) -> ServiceName:
        return ServiceName(self.name, self.namespace, self.partition)

    @property
    def uri(self) -> str:
        if self.kind == "mesh-gateway":
            return f"spiffe://{self.trust_domain}/gateway/mesh/dc/{self.datacenter}"
        ap = "" if self.partition == DEFAULT_PARTITION else f"/ap/{self.partition}"
        return (
            f"spiffe://{self.trust_domain}{ap}/ns/{self.namespace}"
            f"/dc/{self.datacenter}/svc/{self.name}"
        )

    def __str__(self) -> str:
        return self.uri


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization result: what, who decided it, and a reason a human can act on."""

    verdict: Verdict
    engine: str
    reason: str

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW
