"""The HTTP flow an addon sees at an L7 destination (mitmproxy's model, typed).

One :class:`HttpFlow` per request. The L7 driver fills it and calls the addon hooks
of :mod:`gwcore.contract.hookspecs` in this order, each only after authorization
allowed the request (an addon never decides instead of the engines):

- ``tgw_http_requestheaders(flow)``: the request head is known, the body not yet.
  An addon may change ``flow.request`` (headers, path) or answer with
  :meth:`HttpFlow.respond` — the request then never reaches the upstream.
- ``tgw_http_request(flow)``: the whole request has been read. Bodies are streamed,
  so ``flow.request.body`` is ``None`` unless the driver buffered it.
- ``tgw_http_responseheaders(flow)``: the response head is known; an addon may change
  ``flow.response`` headers or status.
- ``tgw_http_response(flow)``: the response is complete.
- ``tgw_http_error(flow)``: the exchange failed (``flow.error`` says why): upstream
  unavailable, reset, timeout, client gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gwcore.contract.events import ConnectionInfo
    from gwcore.policy.model import Decision, Destination, SpiffeID


SENSITIVE_HEADER_WORDS: tuple[str, ...] = ("auth", "cookie", "key", "token", "secret")
"""A header whose lower-cased name contains one of these has its value shown as
``<redacted>`` by :meth:`Headers.__repr__` (``Authorization``, ``Cookie``, ``X-Api-Key``...)."""


def is_sensitive(name: str) -> bool:
    """Whether a header's value may be a credential (see :data:`SENSITIVE_HEADER_WORDS`)."""
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_HEADER_WORDS)


TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
"""RFC 9110 ``tchar``: what a field name is made of."""

GATEWAY_OWNED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)
"""Fields the L7 driver owns (framing, hop-by-hop, the authority): configuration that
would set or remove them is refused (a rewrite of the authority is the link's)."""


def header_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a configured header name (``None``: it can)."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if not set(name) <= TOKEN_CHARS:
        return f"{name!r} is not an HTTP field name (RFC 9110 token characters only)"
    if name.lower() in GATEWAY_OWNED_HEADERS:
        return f"{name!r} is managed by the gateway and cannot be configured"
    return None


def header_value_problem(value: object) -> str | None:
    """Why ``value`` cannot be a header value (``None``: it can). Visible ASCII,
    spaces and tabs inside only: a CR, LF or NUL would split or end the header. The
    value is never quoted in the message (it may be a credential)."""
    if not isinstance(value, str):
        return "must be a string"
    if value != value.strip(" \t"):
        return "must not start or end with white space"
    if any(not (" " <= ch <= "~" or ch == "\t") for ch in value):
        return "contains a control or non-ASCII character"
    return None


class Headers:
    """An ordered multi-map of header fields with case-insensitive names.

    Names are kept as given for HTTP/1.1 and lower-cased on HTTP/2 by the driver;
    lookups ignore case. Values are ``str`` (latin-1 round-trips the wire bytes).
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = [(str(k), str(v)) for k, v in fields]

    @classmethod
    def adopt(cls, fields: list[tuple[str, str]]) -> Headers:
        """Headers over ``fields`` itself, which the caller built of ``str`` pairs and
        hands over (no copy, no conversion: the driver builds several per request)."""
        headers = cls.__new__(cls)
        headers._fields = fields
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        wanted = name.lower()
        for k, v in self._fields:
            if k.lower() == wanted:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [v for k, v in self._fields if k.lower() == wanted]

    def add(self, name: str, value: str) -> None:
        """Append one field (keeps existing fields of the same name)."""
        self._fields.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field named ``name`` by one with ``value``."""
        self.remove(name)
        self._fields.append((name, value))

    def remove(self, name: str) -> None:
        wanted = name.lower()
        self._fields = [(k, v) for k, v in self._fields if k.lower() != wanted]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __repr__(self) -> str:
        # A repr ends up in logs and tracebacks: never show a credential's value.
        shown = [(k, "<redacted>" if is_sensitive(k) else v) for k, v in self._fields]
        return f"Headers({shown!r})"


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    """The normalised path and query the upstream receives (an addon may rewrite it)."""
    authority: str = ""
    scheme: str = "https"
    http_version: str = "HTTP/1.1"
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    trailers: Headers | None = None


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    trailers: Headers | None = None
    http_version: str = "HTTP/1.1"


@dataclass(slots=True)
class HttpFlow:
    """One request and its response at an L7 destination."""

    request: HttpRequest
    source: SpiffeID | None = None
    destination: Destination | None = None
    site: str = ""
    conn: ConnectionInfo | None = None
    response: HttpResponse | None = None
    decision: Decision | None = None
    error: str | None = None
    answered_by: str | None = None
    """The addon that answered with :meth:`respond` (``None``: the upstream answers)."""
    addon_error: str | None = None
    """``"<addon> raised in <hook>"`` when an addon failed and the request or response
    was failed closed (:mod:`gwcore.contract.http_addons`)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free space for addons to pass facts between their hooks."""

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        addon: str = "addon",
    ) -> None:
        """Answer the request here (from ``tgw_http_requestheaders`` or
        ``tgw_http_request``); the upstream never sees it. ``addon`` names the answer
        in the access log (``answered_by``); left at its default, the calling addon's
        registration name is recorded."""
        self.response = HttpResponse(status, Headers(headers), body)
        self.answered_by = addon
