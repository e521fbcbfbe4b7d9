"""h11 events built from header fields already known to be valid, without a second check.

h11 checks every field of every event it is handed against RFC 9110's grammar (a
``field-name`` and a ``field-value`` regular expression per field), also when the
gateway only passes on what h11 itself parsed a moment earlier. Per L7 request that
was 39 matches; the ``x-forwarded-client-cert`` value alone (about 3.6 KB, built once
per connection) cost about a tenth of the request. h11 skips that check for the
events its own parser builds (its private ``_parsed`` keyword); this module builds
the gateway's events that way **only** when every field is valid by where it came
from.

The rule. An event is built trusting its fields only if all of them are:

1. fields h11 parsed from the peer (it checked them as they arrived), whatever was
   removed from them (hop-by-hop fields, the client's XFCC values) — removing fields
   keeps the rest valid; or
2. values the gateway made and knows to be valid: the XFCC element, checked once per
   connection by h11's public, validating constructor (:func:`valid_field_value`);
   an ``x-request-id`` the gateway drew (a UUID's hex digits and dashes); constants
   (``x-forwarded-proto: https``, ``transfer-encoding: chunked``,
   ``connection: close``).

Such fields travel as :class:`ValidFields`, made only where that holds (the
HTTP/1.1 codecs' parsed heads, the exchange's no-addon path). Adding a field to one
(``add``, ``set``) drops the mark: it is then an ordinary :class:`Headers`, checked
as before. Anything else is built the validating way, as before: every field an addon
could have set (the flow path, whose copies are plain ``Headers``), fields from an
HTTP/2 peer, a client's XFCC value forwarded with the element, trailers, the
gateway's own answers.

What h11 still checks either way: ``Content-Length`` and ``Transfer-Encoding``
(framing), ``Host`` (present, once), and a request's method and target (h11 checks
them even for its parsed events; :data:`CHECKS_REQUEST_LINE` says whether the
installed h11 does, and if it does not they are checked here: the method a token,
the target visible ASCII only, RFC 9112 §3).

``_parsed`` is private to h11: :func:`detect` probes the installed h11 at import
(:data:`TRUSTING`); an h11 whose constructors do not take it, or no longer check the
framing fields with it, gets every event built the validating way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import h11

from gwcore.contract.http_flow import Headers

__all__ = [
    "CHECKS_REQUEST_LINE",
    "TRUSTING",
    "ValidFields",
    "detect",
    "known_valid",
    "request_event",
    "response_event",
    "same_provenance",
    "valid_field_value",
]


class ValidFields(Headers):
    """Header fields each of which is known to be valid (see the module docstring).

    Only removal keeps the mark: a field added by ``add`` or ``set`` may be anything,
    so it turns these into ordinary fields, checked when an event is built."""

    __slots__ = ("valid",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(fields)
        self.valid = True

    @classmethod
    def adopt(cls, fields: list[tuple[str, str]]) -> ValidFields:
        headers = cls.__new__(cls)
        headers._fields = fields
        headers.valid = True
        return headers

    def add(self, name: str, value: str) -> None:
        self.valid = False
        super().add(name, value)

    def set(self, name: str, value: str) -> None:
        self.valid = False
        super().set(name, value)


def known_valid(headers: object) -> bool:
    """Whether every field of ``headers`` is known to be valid (and h11 can be told)."""
    return TRUSTING and isinstance(headers, ValidFields) and headers.valid


def same_provenance(source: Headers, fields: list[tuple[str, str]]) -> Headers:
    """``fields`` (adopted, not copied) as trusted as ``source``: the caller took them
    from ``source`` and added only values of rule 2 of the module docstring."""
    if known_valid(source):
        return ValidFields.adopt(fields)
    return Headers.adopt(fields)


def valid_field_value(value: str) -> bool:
    """Whether ``value`` (latin-1 text) is a field value h11 sends: checked by h11's
    public constructor, the check :func:`request_event` would otherwise make per event."""
    try:
        h11.Request(
            method=b"GET",
            target=b"/",
            headers=[(b"host", b"check"), (b"x-check", value.encode("latin-1"))],
        )
    except (h11.LocalProtocolError, UnicodeError):
        return False
    return True


def request_event(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], trusted: bool
) -> h11.Request:
    """An h11 request; its fields are not checked again when ``trusted`` (they are
    :func:`known_valid` ones) and the installed h11 allows it. Raises
    ``h11.LocalProtocolError`` as h11's constructor does."""
    if not (trusted and TRUSTING):
        return h11.Request(method=method, target=target, headers=fields)
    if not CHECKS_REQUEST_LINE and not (_token(method) and _visible(target)):
        raise h11.LocalProtocolError("Illegal method or target characters")
    return h11.Request(method=method, target=target, headers=fields, _parsed=True)


def response_event(
    status: int, fields: list[tuple[bytes, bytes]], reason: bytes, trusted: bool
) -> h11.Response:
    """An h11 response, its fields not checked again when ``trusted`` (as
    :func:`request_event`). The reason is the gateway's (h11 never checks it)."""
    if trusted and TRUSTING and type(status) is int:
        return h11.Response(status_code=status, headers=fields, reason=reason, _parsed=True)
    return h11.Response(status_code=status, headers=fields, reason=reason)


# RFC 9110 §5.6.2 tchar; RFC 9112 §3.2: every request-target form is visible ASCII.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = bytes(range(0x21, 0x7F))


def _token(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _TCHAR)


def _visible(value: bytes) -> bool:
    return bool(value) and not value.translate(None, _VCHAR)


def _refuses(build: Callable[[], object]) -> bool:
    try:
        build()
    except h11.LocalProtocolError:
        return True
    return False


def detect() -> tuple[bool, bool]:
    """``(trusting, checks_request_line)`` for the installed h11: whether its event
    constructors take ``_parsed`` and still check the framing fields with it, and
    whether they then still check a request's method and target."""
    host = (b"host", b"probe")
    try:
        h11.Request(method=b"GET", target=b"/", headers=[host], _parsed=True)
        h11.Response(status_code=200, headers=[], reason=b"OK", _parsed=True)
    except TypeError:
        return False, False
    framing = _refuses(
        lambda: h11.Request(
            method=b"GET",
            target=b"/",
            headers=[host, (b"content-length", b"1, 2")],
            _parsed=True,
        )
    )
    line = _refuses(
        lambda: h11.Request(method=b"GET", target=b"/a b", headers=[host], _parsed=True)
    ) and _refuses(lambda: h11.Request(method=b"G T", target=b"/", headers=[host], _parsed=True))
    return framing, line


TRUSTING, CHECKS_REQUEST_LINE = detect()
"""Whether events may be built trusting their fields; whether h11 then still checks a
request's method and target itself (if not, :func:`request_event` does)."""
