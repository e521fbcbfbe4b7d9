"""The request `tgw explain` decides: built as the data path would (normalised path,
lower-case headers, underscore action), refusing what the gateway refuses with the
parameter's name."""

from __future__ import annotations

import pytest

from gwcore.policy.explain_http import ExplainArgumentError, explain_request
from gwcore.policy.http_facts import MeshHttp, PathNormalization
from gwcore.policy.http_path import RedirectPath

MESH = MeshHttp()


def test_defaults_and_normalisation():
    """Empty method/path mean GET /; the path is normalised, the original kept; a Host
    header sets the authority."""
    facts = explain_request("", "/a/./%62?q=1", ["Host: api.example", "X-A:  v "], MESH)
    assert (facts.method, facts.path, facts.original_path) == ("GET", "/a/b?q=1", "/a/./%62?q=1")
    assert facts.headers == (("host", "api.example"), ("x-a", "v"))
    assert facts.authority == "api.example"
    assert explain_request("PUT", "", [], MESH, authority="billing").path == "/"


def test_mesh_options_apply():
    """MergeSlashes, the redirect marker and HeadersWithUnderscoresAction come from the
    catalog's mesh entry."""
    mesh = MeshHttp(
        PathNormalization(
            merge_slashes=True,
            path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT",
            headers_with_underscores_action="DROP_HEADER",
        )
    )
    facts = explain_request("GET", "//a%2Fb", ["x_y: 1", "x-z: 2"], mesh)
    assert isinstance(facts.path, RedirectPath) and facts.path == "/a/b"
    assert facts.headers == (("x-z", "2"),)


@pytest.mark.parametrize(
    ("method", "path", "headers", "param"),
    [
        ("G T", "/", [], "method"),
        ("GET", "/a%00", [], "path"),
        ("GET", "relative", [], "path"),
        ("GET", "/", ["nocolon"], "header"),
        ("GET", "/", ["bad name: v"], "header"),
        ("GET", "/", ["x: a\x01b"], "header"),
    ],
)
def test_refusals_name_the_parameter(method, path, headers, param):
    with pytest.raises(ExplainArgumentError) as info:
        explain_request(method, path, headers, MESH)
    assert info.value.param == param and str(info.value).startswith(f"{param}=")


def test_underscore_reject_names_the_header_parameter():
    mesh = MeshHttp(PathNormalization(headers_with_underscores_action="REJECT_REQUEST"))
    with pytest.raises(ExplainArgumentError) as info:
        explain_request("GET", "/", ["x_y: 1"], mesh)
    assert info.value.param == "header"
