"""The HTTP request ``tgw explain --method/--path/--header`` asks about (sans-IO).

The admin ``/explain`` endpoint builds the :class:`HttpRequestFacts` the L7 data path
would build for such a request: the method checked as an RFC 9110 token, each header
given as ``Name: value``, the path normalised with the catalog's ``mesh`` options
(:func:`gwcore.policy.http_path.normalize_path`) and ``HeadersWithUnderscoresAction``
applied. Anything the gateway would refuse is an :class:`ExplainArgumentError` naming
the query parameter (answered with 400).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from gwcore.policy.http_facts import HttpRequestFacts, MeshHttp
from gwcore.policy.http_path import PathRejected, headers_with_underscores, normalize_path

__all__ = ["ExplainArgumentError", "explain_request"]

# RFC 9110 §5.6.2 tchar: what a method or a field name is made of.
_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_MAX_HEADERS = 64
_MAX_LENGTH = 8192


class ExplainArgumentError(ValueError):
    """A query parameter of ``/explain`` the gateway refuses; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}= {message}")
        self.param = param


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name or not _TCHAR.issuperset(name):
        raise ExplainArgumentError("header", f'{text[:60]!r} is not "Name: value"')
    value = value.strip(" \t")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ExplainArgumentError("header", f"{name}: the value holds a control character")
    return name.lower(), value


def explain_request(
    method: str,
    path: str,
    headers: Sequence[str],
    mesh: MeshHttp,
    *,
    authority: str = "",
    protocol: str = "HTTP/1.1",
) -> HttpRequestFacts:
    """The request to decide, as the data path would see it (module docstring).

    ``method`` defaults to ``GET`` and ``path`` to ``/`` when empty; a ``Host`` header
    overrides ``authority``. The facts' ``path`` is a
    :class:`~gwcore.policy.http_path.RedirectPath` when the gateway would redirect.
    """
    method = method or "GET"
    if len(method) > 32 or not _TCHAR.issuperset(method):
        raise ExplainArgumentError("method", f"{method[:40]!r} is not an HTTP method")
    if len(path) > _MAX_LENGTH:
        raise ExplainArgumentError("path", "is too long")
    if len(headers) > _MAX_HEADERS:
        raise ExplainArgumentError("header", f"at most {_MAX_HEADERS} headers")
    fields = tuple(_header(h) for h in headers)
    try:
        normalised = normalize_path(path or "/", mesh.normalization, method=method)
        fields = headers_with_underscores(
            fields, mesh.normalization.headers_with_underscores_action
        )
    except PathRejected as e:
        raise ExplainArgumentError(
            "header" if e.reason == "header_underscore" else "path",
            f"would be refused by the gateway ({e.reason})",
        ) from None
    host = next((v for k, v in fields if k == "host"), authority)
    return HttpRequestFacts(
        method=method,
        path=normalised,
        authority=host,
        scheme="https",
        protocol=protocol,
        headers=fields,
        original_path=path or "/",
    )
