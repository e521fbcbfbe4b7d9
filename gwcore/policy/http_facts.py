"""What the L7 path reads of one HTTP request, and the mesh-wide HTTP options (sans-IO).

These are the shared vocabulary of L7 mode: the catalogs fill :class:`MeshHttp` from
Consul's ``mesh`` config entry (``HTTP.Incoming.RequestNormalization``,
``HTTP.SanitizeXForwardedClientCert``); the HTTP driver builds one
:class:`HttpRequestFacts` per request after normalising its path; authorization
engines (L7 intentions, OPA's ``attributes.request.http``) and ``tgw explain`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

L7_PROTOCOLS = frozenset({"http", "http2", "grpc"})
"""``service-defaults`` protocols served in L7 mode (per request); others are L4."""


def is_l7(protocol: str) -> bool:
    """True when a destination of this ``Protocol`` is served request by request."""
    return protocol in L7_PROTOCOLS


@dataclass(frozen=True, slots=True)
class HttpRequestFacts:
    """One HTTP request as a decision sees it (after path normalisation).

    ``headers`` keeps the order and repetitions of the request, with lower-case names
    (HTTP/2 pseudo-headers are not headers: they are ``method``, ``path``,
    ``authority`` and ``scheme`` here).
    """

    method: str
    path: str
    """The normalised path with its query string: what the upstream receives."""
    authority: str = ""
    """``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2)."""
    scheme: str = "https"
    protocol: str = "HTTP/1.1"
    """``HTTP/1.1`` or ``HTTP/2``."""
    headers: tuple[tuple[str, str], ...] = ()
    original_path: str = ""
    """The path exactly as the client sent it (logs, explain); never used to decide."""

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in request order."""
        wanted = name.lower()
        return [v for k, v in self.headers if k == wanted]

    @property
    def path_only(self) -> str:
        """The path without its query string (what ``PathExact``/``PathPrefix`` test)."""
        return self.path.split("?", 1)[0]


@dataclass(frozen=True, slots=True)
class PathNormalization:
    """Consul's ``mesh`` entry ``HTTP.Incoming.RequestNormalization``.

    Values are Consul's (upper-case Envoy enum names); "" means the default.
    """

    insecure_disable_path_normalization: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: str = ""
    """"" / ``IMPLEMENTATION_SPECIFIC_DEFAULT`` / ``KEEP_UNCHANGED`` / ``REJECT_REQUEST``
    / ``UNESCAPE_AND_REDIRECT`` / ``UNESCAPE_AND_FORWARD``."""
    headers_with_underscores_action: str = ""
    """"" (allow) / ``ALLOW`` / ``REJECT_REQUEST`` / ``DROP_HEADER``."""


@dataclass(frozen=True, slots=True)
class MeshHttp:
    """The HTTP part of Consul's ``mesh`` config entry (defaults when there is none)."""

    normalization: PathNormalization = field(default_factory=PathNormalization)
    sanitize_x_forwarded_client_cert: bool = False
    origin: str = ""
    """Where it came from (a file, ``consul:config/mesh``), for ``/config`` and errors."""


DEFAULT_MESH_HTTP = MeshHttp()
