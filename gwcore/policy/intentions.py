"""Evaluating Consul intentions for one L4 connection or one L7 request.

Rules (reference §6, ``website/content/docs/connect/intentions.mdx``):

1. An intention matches a (source, destination) pair when each side matches: ``*`` as
   a name matches any name, ``*`` as a namespace matches any namespace; partitions match
   exactly.
2. Matching intentions are tried in descending :func:`precedence`; the **first match
   wins**. So a more specific allow beats a broader deny and a more specific deny beats a
   broader allow; deny does not override on its own.
3. Intentions of equal precedence that match the same pair are ordered by a total,
   input-order-independent key in which deny sorts before allow, so a conflict resolves
   the same way on every gateway and with the same :attr:`IntentionSet.version`.
4. A matching ``allow`` allows and a matching ``deny`` denies. A matching L7 intention
   (non-empty ``permissions``) denies on an L4 connection: there is no request to test
   the permissions against, and Consul's authorize endpoint does the same.
5. Per request (``decide(..., http=facts)``), a matching L7 intention decides by its
   first permission that matches the request (``l7_permissions.py``); when none
   matches it ABSTAINS — the request falls to the default policy, never to the next
   (less specific) intention, as Consul's ``intentions.mdx`` says. The reason names the
   intention and the permission (``permission 1 (PathPrefix "/admin")``, the index of
   ``Permissions[1]``).
6. No match abstains; the site's ``default_policy`` then applies (see ``decision.py``).
7. An intention whose source is in a cluster peer (``Peer``) or a sameness group
   (``SamenessGroup``) never matches: tgw cannot verify a peer's identity, so a local
   caller must not be taken for one. When such an intention would have matched by
   name, the abstain reason says so (what ``tgw explain`` shows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Decision, Intention, ServiceName, Verdict

WILDCARD = "*"
ENGINE = "intentions"

_ACTION_ORDER = {"deny": 0, "": 1, "allow": 2}


def precedence(intention: Intention) -> int:
    """The intention's rank in Consul's 9-row precedence table (9 most specific, 1 least).

    The destination picks the band (exact name 9, wildcard name 6, wildcard namespace 3)
    and the source lowers it within the band (exact 0, wildcard name 1, wildcard
    namespace 2). Shapes the parser rejects (a wildcard namespace with an exact name)
    are ranked as if the name were a wildcard too, never above a legal shape.
    """
    dst, src = intention.destination, intention.source
    if dst.namespace == WILDCARD:
        value = 3
    elif dst.name == WILDCARD:
        value = 6
    else:
        value = 9
    if src.namespace == WILDCARD:
        value -= 2
    elif src.name == WILDCARD:
        value -= 1
    return value


def _matches(pattern: ServiceName, service: ServiceName) -> bool:
    # An empty name is not a service (a mesh gateway's identity has none), so not even
    # a wildcard intention may speak for it.
    if not service.name:
        return False
    return (
        pattern.partition == service.partition
        and pattern.namespace in (WILDCARD, service.namespace)
        and pattern.name in (WILDCARD, service.name)
    )


def _canonical(value: Any) -> Any:
    """A JSON-ready value with mappings sorted, so equal content serialises equally."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda i: str(i[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    as_consul = getattr(value, "as_consul", None)
    if as_consul is not None:
        return _canonical(as_consul())
    return repr(value)


def _serialise(intention: Intention) -> str:
    def side(s: ServiceName) -> list[str]:
        return [s.partition, s.namespace, s.name]

    return json.dumps(
        [
            side(intention.source),
            side(intention.destination),
            intention.action,
            _canonical(intention.permissions),
            intention.description,
            intention.origin,
            intention.source_peer,
            intention.source_sameness_group,
        ],
        sort_keys=True,
        separators=(",", ":"),
    )


def _order_key(intention: Intention) -> tuple[Any, ...]:
    src, dst = intention.source, intention.destination
    return (
        -precedence(intention),
        src.partition,
        src.namespace,
        src.name,
        dst.partition,
        dst.namespace,
        dst.name,
        _ACTION_ORDER.get(intention.action, -1),
        _serialise(intention),
    )


def _merge(*groups: Sequence[Intention]) -> tuple[Intention, ...]:
    return tuple(sorted((i for g in groups for i in g), key=_order_key))


class IntentionSet:
    """An immutable collection of intentions, indexed for per-connection decisions.

    ``version`` is a digest of the content: equal collections (as multisets) have equal
    versions whatever order they were given in, and any change of content changes it.
    :meth:`decide` does a dictionary lookup and walks only the intentions that can apply
    to the destination, most specific first.
    """

    __slots__ = (
        "_by_name",
        "_by_namespace",
        "_decisions",
        "_global",
        "_intentions",
        "_permission_decisions",
        "_version",
    )

    def __init__(self, intentions: Iterable[Intention] = ()) -> None:
        ordered = tuple(sorted(intentions, key=_order_key))
        self._intentions = ordered
        digest = hashlib.sha256()
        for line in sorted(_serialise(i) for i in ordered):
            digest.update(line.encode())
            digest.update(b"\n")
        self._version = digest.hexdigest()[:16]

        # Three tiers of destination pattern; an exact destination's candidates are
        # merged from all three once, here, so a decision never sorts.
        exact: dict[tuple[str, str, str], list[Intention]] = {}
        by_ns: dict[tuple[str, str], list[Intention]] = {}
        anywhere: list[Intention] = []
        for i in ordered:
            dst = i.destination
            if dst.namespace == WILDCARD:
                anywhere.append(i)
            elif dst.name == WILDCARD:
                by_ns.setdefault((dst.partition, dst.namespace), []).append(i)
            else:
                exact.setdefault((dst.partition, dst.namespace, dst.name), []).append(i)
        # The decision an intention makes never changes: built once, on first match.
        self._decisions: dict[int, Decision] = {}
        self._permission_decisions: dict[tuple[int, int], Decision] = {}
        self._global = tuple(anywhere)
        self._by_namespace = {k: _merge(v, anywhere) for k, v in by_ns.items()}
        self._by_name = {k: _merge(v, by_ns.get(k[:2], ()), anywhere) for k, v in exact.items()}

    @property
    def version(self) -> str:
        """A short hex digest of the content, independent of input order."""
        return self._version

    def __len__(self) -> int:
        return len(self._intentions)

    def __iter__(self) -> Iterator[Intention]:
        """The intentions in evaluation order (descending precedence)."""
        return iter(self._intentions)

    def __repr__(self) -> str:
        return f"<IntentionSet {len(self)} intentions, version {self._version}>"

    def _candidates(self, destination: ServiceName) -> tuple[Intention, ...]:
        key = (destination.partition, destination.namespace, destination.name)
        found = self._by_name.get(key)
        if found is not None:
            return found
        return self._by_namespace.get(key[:2], self._global)

    def decide(
        self,
        source: ServiceName,
        destination: ServiceName,
        http: HttpRequestFacts | None = None,
    ) -> Decision:
        """Allow, deny or abstain for ``source`` reaching ``destination``.

        ``http`` is the request (its path already normalised) at an L7 destination, or
        ``None`` for an L4 connection (module rules 4 and 5). The decision's engine is
        ``"intentions"``; its reason names the intention that matched, its precedence,
        its origin and, per request, the permission; with no match the verdict is
        ``ABSTAIN`` so the site's default policy decides.
        """
        unverifiable = 0
        for intention in self._candidates(destination):
            if intention.source_peer or intention.source_sameness_group:
                unverifiable += _matches(intention.source, source)
                continue
            if _matches(intention.source, source) and _matches(intention.destination, destination):
                if http is not None and intention.permissions:
                    return self._per_request(intention, http)
                decision = self._decisions.get(id(intention))
                if decision is None:
                    decision = self._decisions[id(intention)] = _decision_for(intention)
                return decision
        skipped = (
            f" ({unverifiable} intention(s) from a peer or sameness-group source not "
            "evaluated: tgw cannot verify a peer's identity)"
            if unverifiable
            else ""
        )
        return Decision(
            Verdict.ABSTAIN,
            ENGINE,
            f"no intention matches {_pair(source)} => {_pair(destination)}{skipped}",
        )

    def _per_request(self, intention: Intention, http: HttpRequestFacts) -> Decision:
        for index, permission in enumerate(intention.permissions):
            if permission.matches(http):
                key = (id(intention), index)
                decision = self._permission_decisions.get(key)
                if decision is None:
                    decision = self._permission_decisions[key] = _permission_decision(
                        intention, index
                    )
                return decision
        return Decision(
            Verdict.ABSTAIN,
            ENGINE,
            f"{_matched(intention)}: no permission matches {http.method} {http.path_only}; "
            "the default policy applies",
        )


def _pair(service: ServiceName) -> str:
    return f"{service.namespace}/{service.name}"


def _matched(intention: Intention) -> str:
    where = f", from {intention.origin}" if intention.origin else ""
    return f"matched intention {intention}, precedence {precedence(intention)}{where}"


def _permission_decision(intention: Intention, index: int) -> Decision:
    permission = intention.permissions[index]
    verdict = Verdict.ALLOW if permission.action == "allow" else Verdict.DENY
    return Decision(
        verdict,
        ENGINE,
        f"{_matched(intention)}: permission {index} ({permission.describe()}) "
        + ("allows" if verdict is Verdict.ALLOW else "denies"),
    )


def _decision_for(intention: Intention) -> Decision:
    matched = _matched(intention)
    if intention.permissions:
        return Decision(Verdict.DENY, ENGINE, f"{matched}: L7 intentions deny on L4 connections")
    if intention.action == "allow":
        return Decision(Verdict.ALLOW, ENGINE, matched)
    if intention.action == "deny":
        return Decision(Verdict.DENY, ENGINE, matched)
    # The parser should never let this through; fail closed if it does.
    return Decision(
        Verdict.DENY, ENGINE, f"{matched}: unknown action {intention.action!r} treated as deny"
    )
