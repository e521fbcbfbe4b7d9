"""The ``service-intentions`` config entry: who may talk to whom, flattened into
:class:`~gwcore.policy.model.Intention` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gwcore.policy.consul_decode import (
    _MISSING,
    _Object,
    _Sink,
)
from gwcore.policy.consul_values import INTENTION_ACTIONS, MAX_HASH, WILDCARD, _wildcard_problem
from gwcore.policy.l7_permissions import HttpPermission, parse_permission
from gwcore.policy.model import (
    DEFAULT_NAMESPACE,
    DEFAULT_PARTITION,
    Intention,
    ServiceName,
)

_INTENTIONS_FIELDS = (
    "Kind",
    "Name",
    "Namespace",
    "Partition",
    "Sources",
    "JWT",
    "Meta",
    "CreateIndex",
    "ModifyIndex",
    "Hash",
)
_PERMISSION_FIELDS = ("Action", "HTTP", "JWT")
_SOURCE_FIELDS = (
    "Name",
    "Namespace",
    "Partition",
    "Peer",
    "SamenessGroup",
    "Action",
    "Permissions",
    "Precedence",
    "Type",
    "Description",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
)


@dataclass(frozen=True, slots=True)
class IntentionsEntry:
    """A ``service-intentions`` entry, its sources already flattened into intentions."""

    destination: ServiceName
    intentions: tuple[Intention, ...]
    origin: str
    where: str


def _parse_intentions(sink: _Sink, doc: _Object) -> IntentionsEntry:
    doc.string("Kind")
    name = doc.string("Name", required=True)
    if problem := _wildcard_problem(name):
        doc.problem("Name", problem)
    namespace = doc.string("Namespace") or DEFAULT_NAMESPACE
    if problem := _wildcard_problem(namespace):
        doc.problem("Namespace", problem)
    elif namespace == WILDCARD and name != WILDCARD:
        doc.problem("Namespace", "a wildcard namespace requires a wildcard Name")
    partition = doc.string("Partition") or DEFAULT_PARTITION
    if doc.raw("JWT") not in (_MISSING, {}):
        # tgw cannot check JWTs; accepting the entry would let traffic past a requirement.
        doc.problem("JWT", "JWT requirements are not supported by tgw")
    doc.string_map("Meta")
    for counter in ("CreateIndex", "ModifyIndex"):
        doc.integer(counter, 0)
    doc.integer("Hash", 0, minimum=0, maximum=MAX_HASH)
    destination = ServiceName(name, namespace, partition)
    intentions: list[Intention] = []
    seen: dict[tuple[str, ...], str] = {}
    for src in doc.children("Sources", _SOURCE_FIELDS):
        intention = _parse_source(sink, src, destination)
        # Consul's duplicate key: name, namespace, partition, peer and sameness group.
        key = (
            intention.source.partition,
            intention.source.namespace,
            intention.source.name,
            intention.source_peer,
            intention.source_sameness_group,
        )
        if intention.source.name and key in seen:
            src.problem("Name", f"names the same source as {seen[key]}")
        seen.setdefault(key, src.where)
        intentions.append(intention)
    doc.finish()
    return IntentionsEntry(destination, tuple(intentions), sink.origin, doc.where)


def _parse_source(sink: _Sink, src: _Object, destination: ServiceName) -> Intention:
    name = src.string("Name", required=True)
    if problem := _wildcard_problem(name):
        src.problem("Name", problem)
    peer, sameness = src.string("Peer"), src.string("SamenessGroup")
    local = not (peer or sameness)
    # normalize(): a local source without Namespace/Partition has the destination's
    # (never a wildcard one); a peer's source is in its own cluster.
    inherit = lambda v: v if local and v != WILDCARD else DEFAULT_NAMESPACE  # noqa: E731
    namespace = src.string("Namespace") or inherit(destination.namespace)
    if problem := _wildcard_problem(namespace):
        src.problem("Namespace", problem)
    elif namespace == WILDCARD and name != WILDCARD:
        src.problem("Namespace", "a wildcard namespace requires a wildcard Name")
    explicit_partition = src.string("Partition")
    partition = explicit_partition or (
        destination.partition if local and destination.partition != WILDCARD else DEFAULT_PARTITION
    )
    if problem := _wildcard_problem(partition):
        src.problem("Partition", problem)
    if peer and sameness:
        src.problem("Peer", "Peer and SamenessGroup cannot both be set")
    elif (peer or sameness) and explicit_partition:
        src.problem("Partition", f"cannot be set with {'Peer' if peer else 'SamenessGroup'}")
    source_type = src.string("Type", "consul")
    if source_type not in ("", "consul"):
        src.problem("Type", f'must be "consul", not {source_type!r}')
    description = src.string("Description")
    src.integer("Precedence", 0)
    src.string("LegacyID")

    action = src.string("Action")
    raw_permissions = src.raw("Permissions")
    permissions: tuple[HttpPermission, ...] = ()
    if raw_permissions is not _MISSING:
        if not isinstance(raw_permissions, list) or not all(
            isinstance(p, Mapping) for p in raw_permissions
        ):
            src.problem("Permissions", "must be a list of objects")
        else:
            parsed = [parse_permission(p) for p in src.children("Permissions", _PERMISSION_FIELDS)]
            # A permission with a problem is left out, but the entry is refused anyway
            # (its problems are in the sink), so nothing half-parsed is ever served.
            permissions = tuple(p for p in parsed if p is not None)
    if action and raw_permissions not in (_MISSING, []):
        src.problem("Action", "Action and Permissions are mutually exclusive")
    elif not action and raw_permissions is _MISSING:
        src.problem("Action", "one of Action or Permissions is required")
    elif not action and raw_permissions == []:
        src.problem("Permissions", "must not be empty when there is no Action")
    if action:
        action = action.lower()
        if action not in INTENTION_ACTIONS:
            src.problem("Action", f'must be "allow" or "deny", not {action!r}')
    if raw_permissions not in (_MISSING, []) and destination.name == WILDCARD:
        src.problem("Permissions", "L7 Permissions cannot be used on a wildcard destination")
    src.finish()
    return Intention(
        source=ServiceName(name, namespace, partition),
        destination=destination,
        action="" if raw_permissions not in (_MISSING, []) else action,
        permissions=permissions,
        description=description,
        origin=sink.origin,
        source_peer=peer,
        source_sameness_group=sameness,
    )
