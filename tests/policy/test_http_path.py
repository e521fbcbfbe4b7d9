"""Request-target normalisation: RFC 3986 §6.2.2 and §5.2.4 with Consul's mesh options
(``HTTP.Incoming.RequestNormalization``), refusals, and the property that no spelling of
a path escapes a prefix the normalised path would be matched against."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.http_facts import PathNormalization
from gwcore.policy.http_path import (
    PathRejected,
    RedirectPath,
    headers_with_underscores,
    normalize_path,
)

DEFAULT = PathNormalization()
MERGE = PathNormalization(merge_slashes=True)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/a/b/../c", "/a/c"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/../../etc", "/etc"),
        ("/%2e%2E/admin", "/admin"),
        ("/x/%2e%2e/admin", "/admin"),
        ("/x/.%2E/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/a%7eb%2D", "/a~b-"),
        ("/a%2fb", "/a%2Fb"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        ("/a|b{c}", "/a%7Cb%7Bc%7D"),
        ("/a//b", "/a//b"),
        ("/a/b?x=/../%2e&y=%zz", "/a/b?x=/../%2e&y=%zz"),
        ("/a/..?q", "/?q"),
    ],
)
def test_default_normalisation(target, expected):
    """Unreserved characters are decoded, the rest upper-cased, dot segments removed
    (``%2e`` spellings too), slashes kept unmerged and the query string unchanged."""
    assert normalize_path(target, DEFAULT) == expected


def test_merge_slashes_after_dot_segments():
    """MergeSlashes collapses runs of ``/`` after dot-segment removal (Envoy's order)."""
    assert normalize_path("//a///b/", MERGE) == "/a/b/"
    assert normalize_path("/a//../b", MERGE) == "/a/b"
    assert normalize_path("/a//b?x=//", MERGE) == "/a/b?x=//"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/a%00b", "encoded_nul"),
        ("/a%4", "invalid_escape"),
        ("/a%zzb", "invalid_escape"),
        ("/a%", "invalid_escape"),
        ("/a\x01b", "invalid_character"),
        ("/a b", "invalid_character"),
        ("/a\x7f", "invalid_character"),
        ("/caf\u00e9", "invalid_character"),
        ("/a#frag", "fragment"),
        ("/a?x#frag", "fragment"),
        ("a/b", "not_origin_form"),
        ("http://example.com/a", "not_origin_form"),
        ("", "not_origin_form"),
        ("/a\\..\\b", "backslash"),
    ],
)
def test_refused_targets(target, reason):
    """Targets that cannot be normalised safely are refused with a short reason."""
    with pytest.raises(PathRejected) as info:
        normalize_path(target, DEFAULT)
    assert info.value.reason == reason


def test_asterisk_form_only_for_options():
    """``*`` is the asterisk-form of OPTIONS and nothing else."""
    assert normalize_path("*", DEFAULT, method="OPTIONS") == "*"
    with pytest.raises(PathRejected):
        normalize_path("*", DEFAULT, method="GET")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("", "/a%2Fb/%5C"),
        ("IMPLEMENTATION_SPECIFIC_DEFAULT", "/a%2Fb/%5C"),
        ("KEEP_UNCHANGED", "/a%2Fb/%5C"),
        ("UNESCAPE_AND_FORWARD", "/a/b//"),
    ],
)
def test_escaped_slash_actions(action, expected):
    """PathWithEscapedSlashesAction: keep (default) or unescape %2F and %5C to ``/``."""
    options = PathNormalization(path_with_escaped_slashes_action=action)
    assert normalize_path("/a%2fb/%5c", options) == expected


def test_escaped_slash_unescape_then_dot_segments():
    """Unescaped slashes take part in dot-segment removal: ``..%2F`` cannot hide a climb."""
    options = PathNormalization(path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD")
    assert normalize_path("/public/..%2Fadmin", options) == "/admin"


def test_escaped_slash_reject_and_redirect():
    """REJECT_REQUEST refuses; UNESCAPE_AND_REDIRECT returns a RedirectPath marker only
    when there was something to unescape."""
    reject = PathNormalization(path_with_escaped_slashes_action="REJECT_REQUEST")
    with pytest.raises(PathRejected) as info:
        normalize_path("/a%2Fb", reject)
    assert info.value.reason == "escaped_slash"
    assert normalize_path("/a/b", reject) == "/a/b"
    redirect = PathNormalization(path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")
    found = normalize_path("/a%2Fb?q=1", redirect)
    assert isinstance(found, RedirectPath) and found == "/a/b?q=1"
    assert not isinstance(normalize_path("/a/b", redirect), RedirectPath)


def test_unknown_action_is_a_programming_error():
    """The config layer validates the action; an unknown one here is a bug, not a 400."""
    with pytest.raises(ValueError, match="PathWithEscapedSlashesAction"):
        normalize_path("/", PathNormalization(path_with_escaped_slashes_action="NOPE"))


def test_insecure_disable_keeps_the_path_but_still_refuses():
    """InsecureDisablePathNormalization forwards the path as sent, yet still refuses
    what is never safe (encoded NUL, control characters)."""
    options = PathNormalization(insecure_disable_path_normalization=True)
    assert normalize_path("/a/../%61", options) == "/a/../%61"
    with pytest.raises(PathRejected):
        normalize_path("/a%00", options)


def test_headers_with_underscores():
    """HeadersWithUnderscoresAction: allow, drop the headers, or reject the request."""
    headers = [("x-ok", "1"), ("x_bad", "2"), ("host", "h")]
    assert headers_with_underscores(headers, "") == tuple(headers)
    assert headers_with_underscores(headers, "ALLOW") == tuple(headers)
    assert headers_with_underscores(headers, "DROP_HEADER") == (("x-ok", "1"), ("host", "h"))
    with pytest.raises(PathRejected) as info:
        headers_with_underscores(headers, "REJECT_REQUEST")
    assert info.value.reason == "header_underscore"
    assert headers_with_underscores(headers[:1], "REJECT_REQUEST") == (("x-ok", "1"),)


# --- properties ---------------------------------------------------------------------

_TARGET_CHARS = st.sampled_from(list("/.%2eEfF5cC0aAz~-_?=&!$'()*+,;:@\"<>{}|^`[]"))
_OPTIONS = st.builds(
    PathNormalization,
    merge_slashes=st.booleans(),
    path_with_escaped_slashes_action=st.sampled_from(
        ["", "KEEP_UNCHANGED", "UNESCAPE_AND_FORWARD", "UNESCAPE_AND_REDIRECT"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.text(_TARGET_CHARS, max_size=40), _OPTIONS)
def test_normalisation_is_idempotent(tail, options):
    """Normalising a normalised target returns it unchanged (whatever the options)."""
    try:
        once = normalize_path("/" + tail, options)
    except PathRejected:
        return
    assert normalize_path(once, options) == once


_SEGMENT = st.text(st.sampled_from(list("abcXYZ019-._~")), min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)


def _spell(draw, segments: list[str]) -> str:
    """One spelling of ``/seg/seg...``: unreserved characters randomly percent-encoded
    in either case, and ``.``/``x/..`` detours randomly inserted."""
    parts: list[str] = []
    for seg in segments:
        for _ in range(draw(st.integers(0, 2))):
            detour = draw(st.sampled_from([".", "%2e", "%2E", "q/..", "q/%2e%2e", "q/.%2E"]))
            parts.append(detour)
        spelled = "".join(
            draw(st.sampled_from([ch, f"%{ord(ch):02x}", f"%{ord(ch):02X}"])) for ch in seg
        )
        parts.append(spelled)
    return "/" + "/".join(parts)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.lists(_SEGMENT, min_size=1, max_size=4))
def test_every_spelling_normalises_to_the_same_path(data, segments):
    """Percent-encoding and dot-segment spellings of a path all normalise to it."""
    plain = "/" + "/".join(segments)
    spelled = _spell(data.draw, segments)
    assert normalize_path(spelled, DEFAULT) == plain


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.lists(_SEGMENT, min_size=1, max_size=3),
    st.lists(_SEGMENT, min_size=0, max_size=3),
    _OPTIONS,
)
def test_no_spelling_escapes_a_denied_prefix(data, denied, rest, options):
    """No spelling of a path under a denied prefix reaches the upstream unmatched:
    either it is refused or its normalised path still starts with the denied prefix."""
    prefix = "/" + "/".join(denied)
    spelled = _spell(data.draw, denied + rest)
    if data.draw(st.booleans()):
        spelled += "?" + data.draw(st.text(_TARGET_CHARS.filter(lambda c: c != "#"), max_size=8))
    try:
        found = normalize_path(spelled, options)
    except PathRejected:
        return
    assert found.split("?", 1)[0].startswith(prefix)


def test_every_action_the_mesh_entry_accepts_is_known_here():
    """Each PathWithEscapedSlashesAction / HeadersWithUnderscoresAction the mesh entry
    parser lets through is one normalize_path / headers_with_underscores applies (an
    unknown one would be a ValueError on the data path)."""
    from gwcore.policy.consul_mesh_entry import (
        HEADERS_WITH_UNDERSCORES_ACTIONS,
        PATH_WITH_ESCAPED_SLASHES_ACTIONS,
    )

    for action in PATH_WITH_ESCAPED_SLASHES_ACTIONS:
        options = PathNormalization(path_with_escaped_slashes_action=action)
        normalize_path("/a", options)
    for action in HEADERS_WITH_UNDERSCORES_ACTIONS:
        headers_with_underscores([("x-a", "1")], action)
