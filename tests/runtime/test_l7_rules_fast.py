"""The per-request shortcuts of gwcore.runtime.l7_rules answer as the plain rules do.

``PathMemo``, the per-site memo of normalised request targets, gives exactly what
``normalize_path`` gives (refusals included, every time), follows a change of the mesh
options at once, and holds a bounded amount. ``without_hop_by_hop`` (one pass) keeps
exactly the fields :func:`hop_by_hop` does not name (RFC 9110 §7.6.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.http_facts import PathNormalization
from gwcore.policy.http_path import ESCAPED_SLASH_ACTIONS, PathRejected, normalize_path
from gwcore.runtime.l7_rules import PathMemo, hop_by_hop, without_hop_by_hop


def outcome(normalize, target: str, options: PathNormalization, method: str) -> tuple[str, str]:
    try:
        result = normalize(target, options, method)
    except PathRejected as e:
        return ("refused", e.reason)
    return (type(result).__name__, str(result))


OPTIONS = st.builds(
    PathNormalization,
    insecure_disable_path_normalization=st.booleans(),
    merge_slashes=st.booleans(),
    path_with_escaped_slashes_action=st.sampled_from(sorted(ESCAPED_SLASH_ACTIONS)),
)


def plain(target: str, options: PathNormalization, method: str) -> str:
    return normalize_path(target, options, method=method)


TARGETS = st.one_of(
    st.just("*"),
    st.text(alphabet="/.%2fF5eEaAb?=#\\ ", max_size=24).map(lambda t: "/" + t),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TARGETS, OPTIONS, st.sampled_from(["GET", "OPTIONS"])), max_size=12))
def test_the_memo_answers_as_normalize_path_does(calls) -> None:
    """For any sequence of (target, options, method), asked twice in a row through one
    memo, each answer (the path, its kind — a redirect stays a redirect — or the
    refusal and its reason) is normalize_path's."""
    memo = PathMemo()
    for target, options, method in calls * 2:
        expected = outcome(plain, target, options, method)
        assert outcome(memo.normalize, target, options, method) == expected


def test_a_change_of_options_applies_to_the_next_request() -> None:
    """A target normalised under one ``mesh`` entry is normalised anew under the next
    (here: an escaped slash kept, then refused)."""
    memo = PathMemo()
    keep = PathNormalization()
    reject = PathNormalization(path_with_escaped_slashes_action="REJECT_REQUEST")
    assert memo.normalize("/a%2fb", keep, "GET") == "/a%2Fb"
    with pytest.raises(PathRejected):
        memo.normalize("/a%2fb", reject, "GET")
    assert memo.normalize("/a%2fb", keep, "GET") == "/a%2Fb"


def test_the_memo_is_bounded() -> None:
    """More distinct targets than MAX_ENTRIES never make it hold more; a target longer
    than MAX_TARGET is normalised but not kept."""
    memo = PathMemo()
    options = PathNormalization()
    for i in range(PathMemo.MAX_ENTRIES * 2 + 5):
        assert memo.normalize(f"/p/{i}/../q", options, "GET") == "/p/q"
        assert len(memo._paths) <= PathMemo.MAX_ENTRIES
    memo = PathMemo()
    long_target = "/" + "a" * PathMemo.MAX_TARGET
    assert memo.normalize(long_target, options, "GET") == long_target
    assert len(memo._paths) == 0


FIELD_NAMES = st.sampled_from(
    ["Connection", "connection", "CONNECTION", "x-a", "X-B", "Keep-Alive", "TE", "Host", "Upgrade"]
)
FIELD_VALUES = st.sampled_from(["x-a", " X-B , close", "", "keep-alive", "a", ",,", "x-c,host"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=8))
def test_without_hop_by_hop_drops_what_hop_by_hop_names(fields) -> None:
    """Whatever the ``Connection`` fields list (any case, spaces, empty items), the
    one-pass filter keeps the same fields, in order, as filtering by hop_by_hop()."""
    drop = hop_by_hop(fields)
    assert without_hop_by_hop(fields) == [(k, v) for k, v in fields if k.lower() not in drop]
