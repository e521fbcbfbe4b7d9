"""TLS server names: normalising what a client sent, and Consul's service SNI forms.

Consul names a service on the wire (``agent/connect/sni.go``, ``ServiceSNI``):

- default partition: ``<svc>.<ns>.<dc>.internal.<trust-domain>``
- other partitions: ``<svc>.<ns>.<partition>.<dc>.internal-v1.<trust-domain>``
- a subset adds a leading ``<subset>.`` to either form.

The route table is keyed by these names, and every name a client sends goes through
:func:`normalize_sni` before it is looked up, so case, a trailing dot or odd bytes
cannot reach a different policy than the canonical name would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gwcore.policy.model import DEFAULT_PARTITION, ServiceName

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

# Underscore is not a hostname character, but Consul service names may contain one
# and they end up in the SNI verbatim, so refusing it would make those services unreachable.
# Used with fullmatch: "$" would accept a trailing newline ("name\n" is not "name").
_NAME_CHARS = re.compile(r"[a-z0-9_.-]+")

_INTERNAL = "internal"
_INTERNAL_V1 = "internal-v1"


def normalize_sni(raw: bytes | str | None) -> str | None:
    """Return the canonical form of a client's server name, or ``None`` if it is unusable.

    ``None`` (no SNI sent), non-ASCII or undecodable input, an empty name, a name longer
    than 253 characters, an empty label or one longer than 63, and any character outside
    ``[a-z0-9-_.]`` (after lower-casing) all give ``None``. Exactly one trailing dot is
    removed: RFC 6066 forbids it, and treating ``name.`` as a different name would let a
    client step around a policy keyed by ``name``. The result is idempotent:
    ``normalize_sni(normalize_sni(x)) == normalize_sni(x)``.
    """
    if raw is None:
        return None
    if isinstance(raw, bytes):
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif isinstance(raw, str):
        if not raw.isascii():
            return None
        name = raw
    else:
        return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_CHARS.fullmatch(name):
        return None
    if any(not label or len(label) > MAX_LABEL_LENGTH for label in name.split(".")):
        return None
    return name


def service_sni(
    service: ServiceName, datacenter: str, trust_domain: str, subset: str | None = None
) -> str:
    """The SNI a mesh client sends to reach ``service`` in ``datacenter``.

    The result is lower-cased, so it compares equal to what :func:`normalize_sni` makes
    of the same name sent in any case. :func:`parse_service_sni` inverts it as long as
    no part contains a dot.
    """
    if service.partition == DEFAULT_PARTITION:
        parts = [service.name, service.namespace, datacenter, _INTERNAL, trust_domain]
    else:
        parts = [
            service.name,
            service.namespace,
            service.partition,
            datacenter,
            _INTERNAL_V1,
            trust_domain,
        ]
    if subset:
        parts.insert(0, subset)
    return ".".join(parts).lower()


@dataclass(frozen=True)
class ParsedSNI:
    """The parts of a Consul service SNI: which service, in which DC, which subset."""

    service: ServiceName
    datacenter: str
    subset: str | None


def parse_service_sni(sni: str, trust_domain: str) -> ParsedSNI | None:
    """Split a normalised service SNI in ``trust_domain``; ``None`` if it is not one.

    Only the canonical forms are accepted: the ``internal-v1`` form naming the default
    partition is refused, because :func:`service_sni` never produces it and a second
    spelling of one service is a second key for policy to miss. So whenever the result
    is not ``None``, ``service_sni(p.service, p.datacenter, trust_domain, p.subset) == sni``.
    """
    suffix = "." + trust_domain.lower()
    if not sni.endswith(suffix):
        return None
    labels = sni[: -len(suffix)].split(".")
    if any(not label for label in labels):
        return None
    kind = labels.pop()
    if kind == _INTERNAL:
        base = 3  # svc, ns, dc
    elif kind == _INTERNAL_V1:
        base = 4  # svc, ns, partition, dc
    else:
        return None
    if len(labels) == base + 1:
        subset: str | None = labels.pop(0)
    elif len(labels) == base:
        subset = None
    else:
        return None
    if kind == _INTERNAL:
        name, namespace, datacenter = labels
        partition = DEFAULT_PARTITION
    else:
        name, namespace, partition, datacenter = labels
        if partition == DEFAULT_PARTITION:
            return None
    return ParsedSNI(ServiceName(name, namespace, partition), datacenter, subset)
