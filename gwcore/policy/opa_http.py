"""The HTTP part of the OPA input document, as opa-envoy-plugin builds it (sans-IO).

For a request at an L7 destination the document gains what Envoy's HTTP ``ext_authz``
check carries (``CheckRequest`` in protobuf JSON: empty fields left out, ``int64`` as
a string) and what opa-envoy-plugin's ``RequestToInput`` adds from it::

    input.attributes.request.http.id        x-request-id when the client sent one
    input.attributes.request.http.method    "GET"
    input.attributes.request.http.headers   {lower-case name: value}; repeated names
                                            joined with ","; with Envoy's pseudo-headers
                                            :authority, :method, :path, :scheme
    input.attributes.request.http.path      the normalised path with its query string
    input.attributes.request.http.host      Host / :authority
    input.attributes.request.http.scheme    "http" / "https"
    input.attributes.request.http.protocol  "HTTP/1.1" / "HTTP/2"
    input.attributes.request.http.size      Content-Length as a string, when sent
    input.parsed_path                       Go's url.Parse(path).Path, "/"-trimmed, split
    input.parsed_query                      Go's url.Query(): {name: [values...]}

Envoy puts a unique stream id in ``id`` and the arrival ``time`` in
``attributes.request``; tgw sends no time and the client's ``x-request-id`` as ``id``,
and :func:`http_cache_key_document` leaves ``id`` out of the decision cache's key: a
value unique per request would make every request a miss, and a policy that decides
on a request id cannot be cached anyway (``docs/opa.md``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, unquote_plus

from gwcore.policy.http_facts import HttpRequestFacts

__all__ = ["http_cache_key_document", "http_request_attributes", "parsed_path_and_query"]

_ESCAPE_OK = re.compile(r"%(?![0-9A-Fa-f]{2})")


def http_request_attributes(facts: HttpRequestFacts) -> dict[str, Any]:
    """``attributes.request`` for one request (see the module docstring)."""
    headers: dict[str, str] = {}
    if facts.authority:
        headers[":authority"] = facts.authority
    headers[":method"] = facts.method
    headers[":path"] = facts.path
    headers[":scheme"] = facts.scheme
    for name, value in facts.headers:
        if name == "host":
            continue  # Envoy holds Host as :authority
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    http: dict[str, Any] = {}
    request_id = headers.get("x-request-id", "")
    if request_id:
        http["id"] = request_id
    http["method"] = facts.method
    http["headers"] = headers
    http["path"] = facts.path
    if facts.authority:
        http["host"] = facts.authority
    if facts.scheme:
        http["scheme"] = facts.scheme
    http["protocol"] = facts.protocol
    size = headers.get("content-length", "")
    if size.isdigit() and int(size) > 0:
        http["size"] = str(int(size))  # protobuf JSON writes int64 as a string
    return {"http": http}


def parsed_path_and_query(path: str) -> tuple[list[str], dict[str, list[str]]]:
    """opa-envoy-plugin's ``parsed_path`` and ``parsed_query`` for a request path.

    The path part is percent-decoded (Go's ``URL.Path``), stripped of leading ``/`` and
    split on ``/``. The query follows Go's ``ParseQuery``: pairs split on ``&``, a pair
    holding ``;`` or a bad ``%`` escape is dropped, ``+`` is a space, values in order.
    """
    raw_path, _, query = path.partition("?")
    parsed_path = unquote(raw_path).lstrip("/").split("/")
    parsed_query: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair or ";" in pair or _ESCAPE_OK.search(pair):
            continue
        key, _, value = pair.partition("=")
        parsed_query.setdefault(unquote_plus(key), []).append(unquote_plus(value))
    return parsed_path, parsed_query


def http_cache_key_document(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """``document`` without ``attributes.request.http.id`` (the module docstring says
    why); the document itself when it has none."""
    request = document.get("attributes", {}).get("request")
    if not request or "id" not in request.get("http", {}):
        return document
    trimmed = copy.copy(dict(document))
    attributes = dict(trimmed["attributes"])
    http = dict(attributes["request"]["http"])
    del http["id"]
    attributes["request"] = {**attributes["request"], "http": http}
    trimmed["attributes"] = attributes
    return trimmed
