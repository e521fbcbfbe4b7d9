"""Consul's L7 intention permissions: parsed, validated, compiled and matched (sans-IO).

Parsing follows Consul's ``ServiceIntentionsConfigEntry`` ``normalize()``/``validate()``
(``agent/structs/config_entry_intentions.go``); each problem names its key, e.g.
``Sources[0].Permissions[1].HTTP.PathExact``:

- ``Action`` is ``allow`` or ``deny`` (case-insensitive, as tgw reads source actions);
  ``HTTP`` is required; a permission ``JWT`` is refused (tgw cannot check JWTs).
- At most one of ``PathExact``, ``PathPrefix``, ``PathRegex``; the first two start
  with ``/``. ``Methods`` are upper-cased, each one of GET HEAD POST PUT PATCH DELETE
  CONNECT OPTIONS TRACE, none twice. Each ``Header`` has a ``Name`` and exactly one of
  ``Present``, ``Exact``, ``Prefix``, ``Suffix``, ``Regex``; ``Invert`` is optional.
  An ``HTTP`` block with no path, header or method is refused ("should not be empty").
- Regular expressions are RE2 (``import re2``, linear time); one RE2 refuses is a
  config error here (Envoy would refuse the xDS update).

Matching is Envoy's RBAC as Consul configures it (``agent/xds/rbac.go``); every
criterion of a permission must hold:

- paths match the path *without* its query string (RBAC ``url_path``), case-sensitive;
  ``PathRegex`` and header ``Regex`` must match the whole value (RE2 full match);
- ``Methods`` match ``:method`` exactly (Consul emits the regex ``GET|POST``);
- a header's several values are joined with ``,`` before matching (Envoy's
  ``getAllOfHeaderAsString``); ``host`` and ``:authority`` name the authority, and
  ``:method``/``:path``/``:scheme`` the request line. An absent header matches only an
  inverted ``Present`` (Envoy's ``HeaderUtility::matchHeaders``); otherwise ``Invert``
  negates the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from gwcore.policy.consul_decode import _MISSING, _Object, _Sink
from gwcore.policy.http_facts import HttpRequestFacts

__all__ = [
    "HTTP_METHODS",
    "HeaderMatch",
    "HttpPermission",
    "parse_permission",
    "permission_from_mapping",
]

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
)
"""Consul's ``isValidHTTPMethod``."""

_PERMISSION_FIELDS = ("Action", "HTTP", "JWT")
_HTTP_FIELDS = ("PathExact", "PathPrefix", "PathRegex", "Header", "Methods")
_HEADER_FIELDS = ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert")
_HEADER_KINDS = ("Present", "Exact", "Prefix", "Suffix", "Regex")


def _compile(pattern: str) -> Any:
    """An RE2 pattern compiled for full matches; ``ValueError`` if RE2 refuses it."""
    try:
        return re2.compile(pattern)
    except re2.error as exc:
        raise ValueError(f"is not an RE2 regular expression: {exc}") from None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One ``Header`` criterion: ``kind`` is ``Present``/``Exact``/``Prefix``/``Suffix``/
    ``Regex``; ``name`` is lower-case."""

    name: str
    kind: str
    value: str = ""
    invert: bool = False
    _regex: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, name: str, kind: str, value: str = "", invert: bool = False) -> HeaderMatch:
        """A compiled criterion; ``ValueError`` for a regex RE2 refuses or a bad kind."""
        if kind not in _HEADER_KINDS:
            raise ValueError(f"unknown header match {kind!r}")
        regex = _compile(value) if kind == "Regex" else None
        return cls(name.lower(), kind, value, invert, regex)

    def _values(self, facts: HttpRequestFacts) -> list[str]:
        name = self.name
        if name in ("host", ":authority"):
            return [facts.authority] if facts.authority else []
        if name == ":method":
            return [facts.method]
        if name == ":path":
            return [facts.path]
        if name == ":scheme":
            return [facts.scheme]
        return facts.header_values(name)

    def matches(self, facts: HttpRequestFacts) -> bool:
        values = self._values(facts)
        if not values:
            return self.invert and self.kind == "Present"
        if self.kind == "Present":
            found = True
        else:
            joined = values[0] if len(values) == 1 else ",".join(values)
            if self.kind == "Exact":
                found = joined == self.value
            elif self.kind == "Prefix":
                found = joined.startswith(self.value)
            elif self.kind == "Suffix":
                found = joined.endswith(self.value)
            else:
                found = self._regex.fullmatch(joined) is not None
        return found is not self.invert

    def describe(self) -> str:
        """``Header "x-a" Exact "v"`` (for decision reasons and ``tgw explain``)."""
        what = "Present" if self.kind == "Present" else f'{self.kind} "{self.value}"'
        return f'Header "{self.name}" {"not " if self.invert else ""}{what}'

    def as_consul(self) -> dict[str, object]:
        """The criterion in Consul's JSON shape."""
        out: dict[str, object] = {"Name": self.name}
        out[self.kind] = True if self.kind == "Present" else self.value
        if self.invert:
            out["Invert"] = True
        return out


@dataclass(frozen=True, slots=True)
class HttpPermission:
    """One ``Permissions[]`` item: ``action`` (``allow``/``deny``) when every criterion
    holds. Build with :meth:`build` (compiles the regex) or :func:`parse_permission`."""

    action: str
    path_exact: str = ""
    path_prefix: str = ""
    path_regex: str = ""
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    _path_regex: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        action: str,
        *,
        path_exact: str = "",
        path_prefix: str = "",
        path_regex: str = "",
        methods: tuple[str, ...] = (),
        headers: tuple[HeaderMatch, ...] = (),
    ) -> HttpPermission:
        """A compiled permission; ``ValueError`` for a regex RE2 refuses."""
        regex = _compile(path_regex) if path_regex else None
        return cls(
            action,
            path_exact,
            path_prefix,
            path_regex,
            tuple(m.upper() for m in methods),
            headers,
            regex,
        )

    def matches(self, facts: HttpRequestFacts) -> bool:
        """True when the request meets every criterion (module docstring)."""
        if self.methods and facts.method not in self.methods:
            return False
        if self.path_exact or self.path_prefix or self._path_regex is not None:
            # The path without its query, compared in place (no slice per request).
            path = facts.path
            end = path.find("?")
            if end == -1:
                end = len(path)
            if self.path_exact:
                wanted = self.path_exact
                if end != len(wanted) or not path.startswith(wanted):
                    return False
            elif self.path_prefix:
                wanted = self.path_prefix
                if len(wanted) > end or not path.startswith(wanted):
                    return False
            # RE2's endpos does not end the text for "$", so the regex gets a slice.
            elif self._path_regex.fullmatch(path[:end] if end < len(path) else path) is None:
                return False
        return all(header.matches(facts) for header in self.headers)

    def describe(self) -> str:
        """The criteria, e.g. ``PathPrefix "/admin", Methods GET|HEAD``."""
        parts: list[str] = []
        if self.path_exact:
            parts.append(f'PathExact "{self.path_exact}"')
        elif self.path_prefix:
            parts.append(f'PathPrefix "{self.path_prefix}"')
        elif self.path_regex:
            parts.append(f'PathRegex "{self.path_regex}"')
        if self.methods:
            parts.append("Methods " + "|".join(self.methods))
        parts += [h.describe() for h in self.headers]
        return ", ".join(parts)

    def as_consul(self) -> dict[str, object]:
        """The permission in Consul's JSON shape (for ``/config`` and digests)."""
        http: dict[str, object] = {}
        for key, value in (
            ("PathExact", self.path_exact),
            ("PathPrefix", self.path_prefix),
            ("PathRegex", self.path_regex),
        ):
            if value:
                http[key] = value
        if self.methods:
            http["Methods"] = list(self.methods)
        if self.headers:
            http["Header"] = [h.as_consul() for h in self.headers]
        return {"Action": self.action, "HTTP": http}


def _parse_header(obj: _Object) -> HeaderMatch | None:
    name = obj.string("Name")
    invert = obj.boolean("Invert")
    present = obj.boolean("Present")
    chosen = [("Present", "")] if present else []
    for kind in _HEADER_KINDS[1:]:
        value = obj.string(kind)
        if value:
            chosen.append((kind, value))
    obj.finish()
    if not name:
        obj.sink.problem(obj.where, "missing required Name field")
        return None
    if len(chosen) != 1:
        obj.sink.problem(
            obj.where, "should only contain one of Present, Exact, Prefix, Suffix, or Regex"
        )
        return None
    kind, value = chosen[0]
    try:
        return HeaderMatch.build(name, kind, value, invert)
    except ValueError as exc:
        obj.problem(kind, str(exc))
        return None


def parse_permission(obj: _Object) -> HttpPermission | None:
    """One ``Permissions[]`` object; problems go to ``obj``'s sink and give ``None``."""
    action = obj.string("Action").lower()
    ok = True
    if action not in ("allow", "deny"):
        obj.problem("Action", "must be set to 'allow' or 'deny'")
        ok = False
    if obj.raw("JWT") not in (_MISSING, {}):
        obj.problem("JWT", "JWT requirements are not supported by tgw")
        ok = False
    http = obj.child("HTTP", _HTTP_FIELDS)
    obj.finish()
    if http is None:
        if obj.raw("HTTP") is _MISSING:  # else child() has said what is wrong with it
            obj.problem("HTTP", "is required")
        return None
    paths: dict[str, str] = {}
    for key in ("PathExact", "PathPrefix", "PathRegex"):
        value = http.string(key)
        if value:
            paths[key] = value
            if key != "PathRegex" and not value.startswith("/"):
                http.problem(key, f"doesn't start with '/': {value!r}")
                ok = False
    if len(paths) > 1:
        http.sink.problem(
            http.where, "should only contain at most one of PathExact, PathPrefix, or PathRegex"
        )
        ok = False
    headers: list[HeaderMatch] = []
    for header_obj in http.children("Header", _HEADER_FIELDS):
        header = _parse_header(header_obj)
        ok = ok and header is not None
        if header is not None:
            headers.append(header)
    methods: list[str] = []
    for method in (m.upper() for m in http.strings("Methods")):
        if method not in HTTP_METHODS:
            http.problem("Methods", f"contains an invalid method {method!r}")
            ok = False
        elif method in methods:
            http.problem("Methods", f"contains {method!r} more than once")
            ok = False
        else:
            methods.append(method)
    http.finish()
    if ok and not (paths or headers or methods):
        http.sink.problem(http.where, "should not be empty")
        return None
    if not ok:
        return None
    try:
        return HttpPermission.build(
            action,
            path_exact=paths.get("PathExact", ""),
            path_prefix=paths.get("PathPrefix", ""),
            path_regex=paths.get("PathRegex", ""),
            methods=tuple(methods),
            headers=tuple(headers),
        )
    except ValueError as exc:  # the only thing build() refuses: a regex RE2 will not take
        http.problem("PathRegex", str(exc))
        return None


def permission_from_mapping(
    raw: Mapping[str, object], where: str = "Permissions[0]"
) -> HttpPermission:
    """A permission from Consul's JSON shape; ``ValueError`` listing every problem."""
    sink = _Sink("(permission)")
    found = parse_permission(_Object(sink, where, raw, _PERMISSION_FIELDS, weak=True))
    if found is None or sink.problems:
        raise ValueError("; ".join(f"{p.where}: {p.message}" for p in sink.problems))
    return found
