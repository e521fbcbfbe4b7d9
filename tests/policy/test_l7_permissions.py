"""L7 intention permissions: Consul's validation (``config_entry_intentions.go``
``validate()``) through the catalog document parser, and Envoy RBAC matching semantics
(url_path without the query, RE2 full match, header values joined with ``,``,
Present/Invert)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.consul_shapes import parse_documents
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.l7_permissions import HeaderMatch, HttpPermission, permission_from_mapping


def entry(*permissions: Any) -> dict[str, Any]:
    return {
        "Kind": "service-intentions",
        "Name": "billing",
        "Sources": [
            {"Name": "api", "Action": "allow"},
            {"Name": "web", "Permissions": list(permissions)},
        ],
    }


def problems_of(*permissions: Any) -> list[tuple[str, str]]:
    _, problems = parse_documents([("cat/l7.json", entry(*permissions))])
    return [(p.where, p.message) for p in problems]


def req(path: str = "/", method: str = "GET", **headers: str | list[str]) -> HttpRequestFacts:
    fields: list[tuple[str, str]] = []
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            fields.append((name.replace("_", "-"), v))
    return HttpRequestFacts(method, path, authority="billing", headers=tuple(fields))


@pytest.mark.parametrize(
    ("permission", "where", "message"),
    [
        (
            {"Action": "maybe", "HTTP": {"PathPrefix": "/"}},
            "Permissions[1].Action",
            "'allow' or 'deny'",
        ),
        ({"Action": "allow"}, "Permissions[1].HTTP", "is required"),
        ({"Action": "allow", "HTTP": {}}, "Permissions[1].HTTP", "should not be empty"),
        (
            {"Action": "allow", "HTTP": {"PathExact": "a"}},
            "HTTP.PathExact",
            "doesn't start with '/'",
        ),
        (
            {"Action": "allow", "HTTP": {"PathPrefix": "a"}},
            "HTTP.PathPrefix",
            "doesn't start with '/'",
        ),
        (
            {"Action": "allow", "HTTP": {"PathExact": "/a", "PathRegex": "/b"}},
            "Permissions[1].HTTP",
            "at most one of PathExact, PathPrefix, or PathRegex",
        ),
        ({"Action": "allow", "HTTP": {"PathRegex": "(unclosed"}}, "HTTP.PathRegex", "RE2"),
        ({"Action": "allow", "HTTP": {"PathRegex": "(a)\\1"}}, "HTTP.PathRegex", "RE2"),
        (
            {"Action": "allow", "HTTP": {"Methods": ["GET", "FETCH"]}},
            "HTTP.Methods",
            "invalid method",
        ),
        (
            {"Action": "allow", "HTTP": {"Methods": ["GET", "get"]}},
            "HTTP.Methods",
            "more than once",
        ),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Exact": "x"}]}},
            "HTTP.Header[0]",
            "missing required Name field",
        ),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]}},
            "HTTP.Header[0]",
            "only contain one of Present, Exact, Prefix, Suffix, or Regex",
        ),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Invert": True}]}},
            "HTTP.Header[0]",
            "only contain one of",
        ),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Regex": "a{1001}"}]}},
            "HTTP.Header[0].Regex",
            "RE2",
        ),
        (
            {"Action": "allow", "HTTP": {"PathPrefix": "/"}, "JWT": {"Providers": [{"Name": "o"}]}},
            "Permissions[1].JWT",
            "not supported",
        ),
        (
            {"Action": "allow", "HTTP": {"PathPrefix": "/", "Query": "x"}},
            "HTTP.Query",
            "unknown field",
        ),
    ],
)
def test_invalid_permission_is_a_problem_naming_its_key(permission, where, message):
    """Each of Consul's validation rules gives one problem naming the entry's key
    (``Sources[1].Permissions[1]...``) and the entry is left out."""
    ok = {"Action": "deny", "HTTP": {"PathExact": "/ok"}}
    found = problems_of(ok, permission)
    assert len(found) == 1, found
    assert found[0][0].startswith("Sources[1].") and found[0][0].endswith(where), found
    assert message in found[0][1], found
    docs, _ = parse_documents([("cat/l7.json", entry(ok, permission))])
    assert not docs.intentions


def test_valid_permissions_parse_in_order_with_methods_upper_cased():
    """Permissions keep entry order; methods are upper-cased (Consul's normalize());
    snake_case keys (HCL/CLI spelling) are read too."""
    docs, problems = parse_documents(
        [
            (
                "cat/l7.json",
                entry(
                    {"Action": "deny", "HTTP": {"PathExact": "/admin", "Methods": ["post"]}},
                    {
                        "action": "allow",
                        "http": {
                            "path_prefix": "/",
                            "header": [{"name": "X-Team", "present": True, "invert": True}],
                        },
                    },
                ),
            )
        ]
    )
    assert problems == []
    (l7,) = [i for i in docs.intentions[0].intentions if i.permissions]
    assert l7.action == ""
    first, second = l7.permissions
    assert (first.action, first.path_exact, first.methods) == ("deny", "/admin", ("POST",))
    assert second.headers == (HeaderMatch.build("x-team", "Present", invert=True),)


@pytest.mark.parametrize(
    ("criteria", "request_", "expected"),
    [
        ({"PathExact": "/a"}, req("/a"), True),
        ({"PathExact": "/a"}, req("/a?x=1"), True),
        ({"PathExact": "/a"}, req("/a/"), False),
        ({"PathExact": "/a"}, req("/A"), False),
        ({"PathPrefix": "/a"}, req("/abc"), True),
        ({"PathPrefix": "/a/"}, req("/a"), False),
        ({"PathPrefix": "/a"}, req("/b?/a"), False),
        ({"PathRegex": "/a.*"}, req("/a/b"), True),
        ({"PathRegex": "/a"}, req("/a/b"), False),
        ({"PathRegex": "a"}, req("/a"), False),
        ({"PathRegex": "/a"}, req("/a?q"), True),
        ({"Methods": ["GET", "HEAD"]}, req(method="HEAD"), True),
        ({"Methods": ["GET"]}, req(method="POST"), False),
        ({"PathPrefix": "/", "Methods": ["GET"]}, req("/x", "PUT"), False),
    ],
)
def test_path_and_method_matching(criteria, request_, expected):
    """Paths are matched without the query string (Envoy's url_path), case-sensitively;
    regexes must match the whole path; every criterion must hold."""
    permission = permission_from_mapping({"Action": "allow", "HTTP": criteria})
    assert permission.matches(request_) is expected


@pytest.mark.parametrize(
    ("header", "request_", "expected"),
    [
        ({"Name": "x-a", "Present": True}, req(x_a=""), True),
        ({"Name": "x-a", "Present": True}, req(), False),
        ({"Name": "x-a", "Present": True, "Invert": True}, req(), True),
        ({"Name": "x-a", "Present": True, "Invert": True}, req(x_a="1"), False),
        ({"Name": "x-a", "Exact": "1"}, req(x_a="1"), True),
        ({"Name": "X-A", "Exact": "1"}, req(x_a="1"), True),
        ({"Name": "x-a", "Exact": "1"}, req(x_a=["1", "2"]), False),
        ({"Name": "x-a", "Exact": "1,2"}, req(x_a=["1", "2"]), True),
        ({"Name": "x-a", "Exact": "1", "Invert": True}, req(x_a="2"), True),
        ({"Name": "x-a", "Exact": "1", "Invert": True}, req(), False),
        ({"Name": "x-a", "Prefix": "ab"}, req(x_a="abc"), True),
        ({"Name": "x-a", "Suffix": "bc"}, req(x_a="abc"), True),
        ({"Name": "x-a", "Suffix": "bc", "Invert": True}, req(x_a="abc"), False),
        ({"Name": "x-a", "Regex": "a.c"}, req(x_a="abc"), True),
        ({"Name": "x-a", "Regex": "b"}, req(x_a="abc"), False),
        ({"Name": "host", "Exact": "billing"}, req(), True),
        ({"Name": ":authority", "Prefix": "bill"}, req(), True),
        ({"Name": ":method", "Exact": "GET"}, req(), True),
    ],
)
def test_header_matching_is_envoys(header, request_, expected):
    """Envoy's HeaderUtility::matchHeaders: values joined with ',', regex full match, an
    absent header matches only an inverted Present, Invert negates otherwise."""
    permission = permission_from_mapping({"Action": "allow", "HTTP": {"Header": [header]}})
    assert permission.matches(request_) is expected


def test_describe_names_the_criteria():
    """describe() is what decision reasons and ``tgw explain`` show."""
    permission = permission_from_mapping(
        {
            "Action": "deny",
            "HTTP": {
                "PathPrefix": "/admin",
                "Methods": ["GET"],
                "Header": [{"Name": "x-a", "Exact": "1", "Invert": True}],
            },
        }
    )
    assert permission.describe() == 'PathPrefix "/admin", Methods GET, Header "x-a" not Exact "1"'


# --- properties ---------------------------------------------------------------------

_SEG = st.text(st.sampled_from(list("abcXY01-._~")), min_size=1, max_size=5)
_PATHS = st.lists(_SEG, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
_QUERY = st.text(st.sampled_from(list("abc=&/?.%20")), max_size=10)


@settings(max_examples=200, deadline=None)
@given(_PATHS, _PATHS, _QUERY)
def test_query_string_never_changes_a_match(path, rule, query):
    """A permission never matches a path that differs only in its query string
    differently from the path itself (exact, prefix and regex alike)."""
    for criteria in ({"PathExact": rule}, {"PathPrefix": rule}, {"PathRegex": rule + ".*"}):
        permission = permission_from_mapping({"Action": "allow", "HTTP": criteria})
        assert permission.matches(req(path)) == permission.matches(req(f"{path}?{query}"))


@settings(max_examples=200, deadline=None)
@given(_PATHS, _PATHS)
def test_prefix_contains_exact_and_regex_is_a_full_match(path, rule):
    """PathExact implies PathPrefix; PathRegex of a literal is PathExact (full match)."""
    exact = HttpPermission.build("allow", path_exact=rule)
    prefix = HttpPermission.build("allow", path_prefix=rule)
    literal = HttpPermission.build(
        "allow", path_regex="".join(f"\\{c}" if c in ".-" else c for c in rule)
    )
    r = req(path)
    assert exact.matches(r) == (path == rule)
    assert prefix.matches(r) == path.startswith(rule)
    assert literal.matches(r) == exact.matches(r)
    if exact.matches(r):
        assert prefix.matches(r)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["Present", "Exact", "Prefix", "Suffix", "Regex"]),
    st.text("ab", max_size=3),
    st.lists(st.text("ab", max_size=3), max_size=3),
)
def test_invert_negates_unless_the_header_is_absent(kind, value, values):
    """With the header present, Invert is exactly the negation; with it absent, only an
    inverted Present matches."""
    if kind != "Present" and not value:
        value = "a"
    plain = HeaderMatch.build("x-h", kind, value)
    inverted = HeaderMatch.build("x-h", kind, value, invert=True)
    r = req(x_h=values) if values else req()
    if values:
        assert inverted.matches(r) is not plain.matches(r)
    else:
        assert not plain.matches(r)
        assert inverted.matches(r) is (kind == "Present")


def test_http_of_the_wrong_type_is_one_problem():
    """An HTTP that is not an object is reported once (not also as missing)."""
    found = problems_of({"Action": "allow", "HTTP": "/admin"})
    assert found == [("Sources[1].Permissions[0].HTTP", "must be an object, not a string")]
