"""Drop-in addon: rewrite request and response headers (and a path prefix) per destination.

Configured with one table per destination in the site's section; enable it with this
directory in ``[gateway] plugin_paths``::

    [sites.main]
    plugins = ["file_catalog", "builtin_ca", "intentions", "header_rewrite"]

    [sites.main.header_rewrite.billing]
    request_remove = ["x-debug"]                 # every field of these names
    request_set = { "x-env" = "prod" }           # replaces any field of that name
    request_add = { "x-via" = "tgw" }            # appended, existing fields kept
    response_remove = ["server"]
    response_set = { "cache-control" = "no-store" }
    path_prefix = "/api/"                        # a request path starting with this...
    path_prefix_rewrite = "/v2/"                 # ...starts with this instead

Applied in that order (remove, set, add) after authorization: the engines matched
the path the client sent (normalised); the upstream receives the rewritten one. The
query string is kept. Response rules apply to the upstream's responses (not to an
answer another addon made). Names are RFC 9110 tokens; the fields the gateway owns
(``host``, ``content-length``, ``transfer-encoding``, ``connection`` and the other
hop-by-hop fields) are refused, and values are visible ASCII (no CR, LF or NUL),
so a rule can neither reframe a message nor inject a header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gwcore.contract.http_flow import Headers, header_name_problem, header_value_problem
from gwcore.policy.config_reader import ConfigProblem, SectionReader

NAME = "header_rewrite"


@dataclass(frozen=True)
class HeaderRules:
    """remove, then set, then add."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def apply(self, headers: Headers) -> None:
        for name in self.remove:
            headers.remove(name)
        for name, value in self.set:
            headers.set(name, value)
        for name, value in self.add:
            headers.add(name, value)


@dataclass(frozen=True)
class Rewrite:
    request: HeaderRules
    response: HeaderRules
    path_prefix: str = ""
    path_prefix_rewrite: str = ""

    def rewrite_path(self, path: str) -> str:
        if self.path_prefix and path.startswith(self.path_prefix):
            return self.path_prefix_rewrite + path[len(self.path_prefix) :]
        return path


def _names(reader: SectionReader, key: str) -> tuple[str, ...]:
    names = reader.strings(key)
    for name in names:
        problem = header_name_problem(name)
        if problem:
            reader.problem(key, problem)
    return tuple(n.lower() for n in names)


def _fields(reader: SectionReader, key: str) -> tuple[tuple[str, str], ...]:
    table = reader.table_value(key)
    fields = []
    for name, value in table.items():
        problem = header_name_problem(name)
        if problem:
            reader.problem(f"{key}.{name}", problem)
            continue
        problem = header_value_problem(value)
        if problem:
            reader.problem(f"{key}.{name}", problem)
            continue
        fields.append((name.lower(), value))
    return tuple(fields)


def _prefix(reader: SectionReader, key: str) -> str:
    value = reader.string(key, "") or ""
    if value and (not value.startswith("/") or header_value_problem(value) or " " in value):
        reader.problem(key, f"{value!r} must be a path starting with '/', without spaces")
        return ""
    if "?" in value or "#" in value:
        reader.problem(key, f"{value!r} must not hold a query or fragment")
        return ""
    return value


def read_rewrites(site: Any) -> tuple[dict[str, Rewrite], list[ConfigProblem]]:
    """The section ``[sites.NAME.header_rewrite]``: one table per destination."""
    section: Mapping[str, Any] = site.plugin_section(NAME)
    rewrites: dict[str, Rewrite] = {}
    problems: list[ConfigProblem] = []
    for destination, table in section.items():
        key = f"{site.prefix}.{NAME}.{destination}"
        if not isinstance(table, Mapping):
            problems.append(
                ConfigProblem(site.file, key, "must be a table: [sites.NAME.header_rewrite.<dest>]")
            )
            continue
        reader = SectionReader(site.file, key, table)
        request = HeaderRules(
            _names(reader, "request_remove"),
            _fields(reader, "request_set"),
            _fields(reader, "request_add"),
        )
        response = HeaderRules(
            _names(reader, "response_remove"),
            _fields(reader, "response_set"),
            _fields(reader, "response_add"),
        )
        prefix = _prefix(reader, "path_prefix")
        rewrite = _prefix(reader, "path_prefix_rewrite")
        if bool("path_prefix" in table) != bool("path_prefix_rewrite" in table):
            reader.problem("path_prefix", "path_prefix and path_prefix_rewrite go together")
        found = reader.finish()
        problems += found
        if not found:
            rewrites[destination] = Rewrite(request, response, prefix, rewrite)
    return rewrites, problems


class HeaderRewrite:
    name = NAME

    def __init__(self) -> None:
        self.rewrites: dict[str, Rewrite] = {}

    def tgw_validate_site_config(self, site: Any) -> list[ConfigProblem]:
        return read_rewrites(site)[1]

    def load(self, ctx: Any) -> None:
        self.rewrites = read_rewrites(ctx.site.config)[0]

    def _rewrite(self, flow: Any) -> Rewrite | None:
        if flow.destination is None:
            return None
        return self.rewrites.get(str(flow.destination.service))

    def tgw_http_requestheaders(self, flow: Any) -> None:
        rewrite = self._rewrite(flow)
        if rewrite is not None:
            rewrite.request.apply(flow.request.headers)
            flow.request.path = rewrite.rewrite_path(flow.request.path)

    def tgw_http_responseheaders(self, flow: Any) -> None:
        rewrite = self._rewrite(flow)
        if rewrite is not None and flow.response is not None:
            rewrite.response.apply(flow.response.headers)


addons = [HeaderRewrite]
