"""The ``mesh`` config entry: the part tgw uses, its ``HTTP`` block (sans-IO).

Consul's ``MeshConfigEntry`` (``agent/structs/config_entry_mesh.go``) holds one entry per
admin partition, always named ``mesh``. tgw reads:

- ``HTTP.Incoming.RequestNormalization``: ``InsecureDisablePathNormalization``,
  ``MergeSlashes`` (booleans), ``PathWithEscapedSlashesAction`` (one of Envoy's enum
  names, as Consul validates them: exact, upper case) and
  ``HeadersWithUnderscoresAction`` (likewise);
- ``HTTP.SanitizeXForwardedClientCert`` (boolean).

Every other key of the entry (``TLS``, ``TransparentProxy``, ``Peering``, ``Meta``,
``AllowEnablingPermissiveMutualTLS``, ...) is accepted and ignored; inside ``HTTP`` an
unknown key is a problem (a typo there would silently weaken path matching). Keys match
as in every config entry: any case, with or without underscores
(``request_normalization`` as ``consul config read`` prints HCL-style dumps).
"""

from __future__ import annotations

from dataclasses import dataclass

from gwcore.policy.consul_decode import _Object, _Sink
from gwcore.policy.consul_values import MESH_CONFIG_NAME
from gwcore.policy.http_facts import MeshHttp, PathNormalization
from gwcore.policy.model import DEFAULT_PARTITION

PATH_WITH_ESCAPED_SLASHES_ACTIONS = (
    "IMPLEMENTATION_SPECIFIC_DEFAULT",
    "KEEP_UNCHANGED",
    "REJECT_REQUEST",
    "UNESCAPE_AND_REDIRECT",
    "UNESCAPE_AND_FORWARD",
)
"""Consul's ``PathWithEscapedSlashesActionStrings()``, in its order."""

HEADERS_WITH_UNDERSCORES_ACTIONS = ("ALLOW", "REJECT_REQUEST", "DROP_HEADER")
"""Consul's ``HeadersWithUnderscoresActionStrings()``, in its order."""

_HTTP_FIELDS = ("SanitizeXForwardedClientCert", "Incoming")
_INCOMING_FIELDS = ("RequestNormalization",)
_NORMALIZATION_FIELDS = (
    "InsecureDisablePathNormalization",
    "MergeSlashes",
    "PathWithEscapedSlashesAction",
    "HeadersWithUnderscoresAction",
)


@dataclass(frozen=True, slots=True)
class MeshEntry:
    """One ``mesh`` entry: its partition and its HTTP options."""

    partition: str
    http: MeshHttp
    origin: str
    where: str


def _enum(obj: _Object, name: str, allowed: tuple[str, ...], what: str) -> str:
    value = obj.string(name)
    if value and value not in allowed:
        # Consul's validatePathWithEscapedSlashesAction / validateHeadersWithUnderscoresAction.
        obj.problem(
            name,
            f"no matching {what} value found for {value}, please specify one of "
            f"[{', '.join(allowed)}]",
        )
        return ""
    return value


def _parse_mesh(sink: _Sink, doc: _Object) -> MeshEntry:
    """Read one ``mesh`` entry; problems go to ``sink`` (the caller leaves it out then)."""
    name = doc.string("Name")
    if name not in ("", MESH_CONFIG_NAME):
        doc.problem("Name", f"must be {MESH_CONFIG_NAME!r} (Consul names the mesh entry so)")
    partition = doc.string("Partition") or DEFAULT_PARTITION
    normalization = PathNormalization()
    sanitize = False
    http = doc.child("HTTP", _HTTP_FIELDS)
    if http is not None:
        sanitize = http.boolean("SanitizeXForwardedClientCert")
        incoming = http.child("Incoming", _INCOMING_FIELDS)
        rn = None
        if incoming is not None:
            rn = incoming.child("RequestNormalization", _NORMALIZATION_FIELDS)
            incoming.finish()
        if rn is not None:
            normalization = PathNormalization(
                insecure_disable_path_normalization=rn.boolean("InsecureDisablePathNormalization"),
                merge_slashes=rn.boolean("MergeSlashes"),
                path_with_escaped_slashes_action=_enum(
                    rn,
                    "PathWithEscapedSlashesAction",
                    PATH_WITH_ESCAPED_SLASHES_ACTIONS,
                    "PathWithEscapedSlashesAction",
                ),
                headers_with_underscores_action=_enum(
                    rn,
                    "HeadersWithUnderscoresAction",
                    HEADERS_WITH_UNDERSCORES_ACTIONS,
                    "HeadersWithUnderscoresAction",
                ),
            )
            rn.finish()
        http.finish()
    mesh_http = MeshHttp(normalization, sanitize, origin=sink.origin)
    return MeshEntry(partition, mesh_http, sink.origin, doc.where)


def describe_mesh_http(mesh: MeshHttp) -> dict[str, object]:
    """The effective options, JSON-ready (``/config``), in Consul's key names."""
    n = mesh.normalization
    return {
        "origin": mesh.origin or "(default: no mesh entry)",
        "RequestNormalization": {
            "InsecureDisablePathNormalization": n.insecure_disable_path_normalization,
            "MergeSlashes": n.merge_slashes,
            "PathWithEscapedSlashesAction": n.path_with_escaped_slashes_action
            or "IMPLEMENTATION_SPECIFIC_DEFAULT",
            "HeadersWithUnderscoresAction": n.headers_with_underscores_action or "ALLOW",
        },
        "SanitizeXForwardedClientCert": mesh.sanitize_x_forwarded_client_cert,
    }
