"""The checks opa-envoy-plugin makes of an object decision, so a policy's malformed answer
is an error here exactly where it is an error there (sans-IO).

The plugin (``envoyauth/response.go`` and its ``Check``) reads, from an object result:

- always: ``headers`` (an object of string or string-array values, or an array of
  such objects) and ``dynamic_metadata`` (an object);
- when ``allowed``: ``request_headers_to_remove`` and ``query_parameters_to_remove``
  (arrays of strings), ``response_headers_to_add`` (like ``headers``);
- when denied: ``body`` (a string) and ``http_status`` (an integer that is one of
  Envoy's ``envoy.type.v3.StatusCode`` values).

A field it does not read is not checked. Any failed check makes the plugin answer
Envoy with an error, which Envoy's network filter turns into a denied connection
unless ``failure_mode_allow``: here it is an ``Evaluation`` error, so a deny unless
``fail_open``. tgw authorizes TCP connections, so none of these fields has an
effect beyond being checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# envoy.type.v3.StatusCode, without Empty (0), which Go's http.StatusText refuses first.
ENVOY_STATUS_CODES = frozenset(
    {100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226}
    | {300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 423, 424, 426, 428, 429, 431}
    | {500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511}
)


def _type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "null" if value is None else type(value).__name__


def _headers_problem(field: str, value: object) -> str | None:
    objects = value if isinstance(value, list | tuple) else [value]
    for headers in objects:
        if not isinstance(headers, Mapping):
            return f"{field} must be an object or an array of objects, not {_type(headers)}"
        for key, item in headers.items():
            items = item if isinstance(item, list | tuple) else [item]
            if not all(isinstance(v, str) for v in items):
                return f"{field}: header {key!r} must be a string or an array of strings"
    return None


def _strings_problem(field: str, value: object) -> str | None:
    if not isinstance(value, list | tuple):
        return f"{field} must be an array of strings, not {_type(value)}"
    if not all(isinstance(v, str) for v in value):
        return f"{field} must be an array of strings"
    return None


def _status_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"http_status must be a number, not {_type(value)}"
    if isinstance(value, float) or value not in ENVOY_STATUS_CODES:
        return f"http_status {value} is not an HTTP status code Envoy knows"
    return None


def result_object_problem(result: Mapping[str, object], allowed: bool) -> str | None:
    """What is wrong with an object decision, as opa-envoy-plugin sees it, or None."""
    checks: list[tuple[str, Callable[[str, object], str | None]]] = [("headers", _headers_problem)]
    if allowed:
        checks += [
            ("request_headers_to_remove", _strings_problem),
            ("response_headers_to_add", _headers_problem),
            ("query_parameters_to_remove", _strings_problem),
        ]
    for field, check in checks:
        if field in result:
            problem = check(field, result[field])
            if problem:
                return problem
    metadata = result.get("dynamic_metadata", {})
    if not isinstance(metadata, Mapping):
        return f"dynamic_metadata must be an object, not {_type(metadata)}"
    if not allowed:
        if "body" in result and not isinstance(result["body"], str):
            return f"body must be a string, not {_type(result['body'])}"
        if "http_status" in result:
            return _status_problem(result["http_status"])
    return None
