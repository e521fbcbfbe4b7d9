"""Normalising an HTTP request target before it is matched and forwarded (sans-IO).

Rules, applied in Envoy's order (``ConnectionManagerUtility::maybeNormalizePath``) with
the options of Consul's ``mesh`` entry ``HTTP.Incoming.RequestNormalization``:

1. Refused outright (:class:`PathRejected`, a short metric-safe reason): a target that
   is not origin-form (does not start with ``/``; ``*`` is accepted only for
   ``OPTIONS``), a fragment (``#``), a control character, white space or a non-ASCII
   character, a ``%`` not followed by two hex digits, an encoded NUL (``%00``), and a
   raw backslash in the path (upstreams disagree on whether it is a separator).
2. Escaped slashes (``%2F``, ``%5C``, any case) per ``PathWithEscapedSlashesAction``:
   ``""``/``IMPLEMENTATION_SPECIFIC_DEFAULT``/``KEEP_UNCHANGED`` keep them (Envoy's
   default behaviour is to keep them), ``REJECT_REQUEST`` refuses the request,
   ``UNESCAPE_AND_FORWARD`` decodes them to ``/`` (a backslash is a separator to
   Envoy's URL canonicaliser too) and ``UNESCAPE_AND_REDIRECT`` returns a
   :class:`RedirectPath` when the target had any, which the driver answers with a
   ``307`` to that location instead of forwarding.
3. Unless ``InsecureDisablePathNormalization``: RFC 3986 §6.2.2 — percent-encoded
   unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, the hex digits of what
   stays encoded are upper-cased, characters a path may not hold raw
   (``" < > ^ ` { | }``) are percent-encoded — then §5.2.4 dot-segment removal (so
   ``%2e%2E`` spellings are dot segments too; ``..`` never climbs above the root).
4. ``MergeSlashes``: runs of ``/`` become one.
5. The query string is kept exactly as sent (only the checks of rule 1 apply to it).

:func:`normalize_path` is idempotent: normalising its output returns it unchanged.
:func:`headers_with_underscores` applies ``HeadersWithUnderscoresAction``.
"""

from __future__ import annotations

from collections.abc import Iterable

from gwcore.policy.http_facts import PathNormalization

__all__ = [
    "ESCAPED_SLASH_ACTIONS",
    "UNDERSCORE_ACTIONS",
    "PathRejected",
    "RedirectPath",
    "headers_with_underscores",
    "normalize_path",
]

ESCAPED_SLASH_ACTIONS = frozenset(
    {
        "",
        "IMPLEMENTATION_SPECIFIC_DEFAULT",
        "KEEP_UNCHANGED",
        "REJECT_REQUEST",
        "UNESCAPE_AND_REDIRECT",
        "UNESCAPE_AND_FORWARD",
    }
)
"""Consul's ``PathWithEscapedSlashesAction`` values (``""`` is the default)."""

UNDERSCORE_ACTIONS = frozenset({"", "ALLOW", "REJECT_REQUEST", "DROP_HEADER"})
"""Consul's ``HeadersWithUnderscoresAction`` values (``""`` allows)."""

_HEX = "0123456789abcdefABCDEF"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar (less pct-encoded and unreserved) plus "/": what a path may hold raw.
_PATH_RAW = frozenset("!$&'()*+,;=:@/") | _UNRESERVED
# Printable ASCII a client may send in a target but a path may not hold raw: encoded,
# as Chromium's canonicaliser (Envoy's normalize_path) does.
_PATH_ENCODE = frozenset('"<>^`{|}[]')
_ESCAPED_SLASHES = {"2F": "/", "5C": "/"}


class PathRejected(ValueError):  # noqa: N818 - the name the L7 driver imports
    """A request target that cannot be normalised safely; the driver answers 400.

    ``reason`` is short and from a fixed set (a metric label), never the path itself.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedirectPath(str):
    """The normalised target to redirect to (``UNESCAPE_AND_REDIRECT``): the driver
    answers ``307`` with this ``Location`` and forwards nothing."""


def _check_chars(text: str) -> None:
    for ch in text:
        code = ord(ch)
        if code <= 0x20 or code >= 0x7F:
            raise PathRejected("invalid_character")
        if ch == "#":
            raise PathRejected("fragment")


def _escapes(path: str) -> bool:
    """Validate every ``%`` escape; True when the path holds an escaped slash."""
    slashes = False
    i = path.find("%")
    while i != -1:
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise PathRejected("invalid_escape")
        if pair == "00":
            raise PathRejected("encoded_nul")
        if pair.upper() in _ESCAPED_SLASHES:
            slashes = True
        i = path.find("%", i + 3)
    return slashes


def _canonical_chars(path: str, unescape_slashes: bool) -> str:
    """RFC 3986 §6.2.2: decode unreserved, upper-case the rest, encode the unsafe."""
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "%":
            pair = path[i + 1 : i + 3].upper()
            decoded = chr(int(pair, 16))
            if decoded in _UNRESERVED:
                out.append(decoded)
            elif unescape_slashes and pair in _ESCAPED_SLASHES:
                out.append(_ESCAPED_SLASHES[pair])
            else:
                out.append("%" + pair)
            i += 3
            continue
        if ch in _PATH_ENCODE:
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path (segments, not the string loop)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    # A path ending in a dot segment names a directory: keep its trailing slash.
    if segments and segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def _unescape_slashes_only(path: str) -> str:
    for encoded, plain in _ESCAPED_SLASHES.items():
        path = path.replace("%" + encoded, plain).replace("%" + encoded.lower(), plain)
    return path


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def normalize_path(target: str, options: PathNormalization, *, method: str | None = None) -> str:
    """The request target the gateway matches and forwards (path plus unchanged query).

    Raises :class:`PathRejected` for a target it refuses (module rules). Returns a
    :class:`RedirectPath` (still a ``str``) when ``UNESCAPE_AND_REDIRECT`` applies.
    ``method``, when given, limits the asterisk-form ``*`` to ``OPTIONS``.
    """
    action = options.path_with_escaped_slashes_action
    if action not in ESCAPED_SLASH_ACTIONS:
        raise ValueError(f"unknown PathWithEscapedSlashesAction {action!r}")
    if target == "*":
        if method is not None and method != "OPTIONS":
            raise PathRejected("asterisk_form")
        return target
    _check_chars(target)
    if not target.startswith("/"):
        raise PathRejected("not_origin_form")
    path, sep, query = target.partition("?")
    if "\\" in path:
        raise PathRejected("backslash")
    has_slashes = _escapes(path)
    unescape = False
    if has_slashes:
        if action == "REJECT_REQUEST":
            raise PathRejected("escaped_slash")
        unescape = action in ("UNESCAPE_AND_FORWARD", "UNESCAPE_AND_REDIRECT")
    if options.insecure_disable_path_normalization:
        if unescape:
            path = _unescape_slashes_only(path)
    else:
        path = _remove_dot_segments(_canonical_chars(path, unescape))
    if options.merge_slashes:
        path = _merge_slashes(path)
    result = path + sep + query
    if unescape and action == "UNESCAPE_AND_REDIRECT":
        return RedirectPath(result)
    return result


def headers_with_underscores(
    headers: Iterable[tuple[str, str]], action: str
) -> tuple[tuple[str, str], ...]:
    """The headers after ``HeadersWithUnderscoresAction`` (Envoy's semantics).

    ``""``/``ALLOW`` keeps them; ``DROP_HEADER`` drops every header whose name holds
    ``_``; ``REJECT_REQUEST`` raises :class:`PathRejected` (``header_underscore``), which
    the driver answers with 400 (HTTP/1.1) or a stream reset (HTTP/2). Pseudo-headers
    (``:path``…) are never headers here.
    """
    if action not in UNDERSCORE_ACTIONS:
        raise ValueError(f"unknown HeadersWithUnderscoresAction {action!r}")
    items = tuple(headers)
    if action in ("", "ALLOW"):
        return items
    kept = tuple(h for h in items if "_" not in h[0])
    if len(kept) != len(items) and action == "REJECT_REQUEST":
        raise PathRejected("header_underscore")
    return kept
