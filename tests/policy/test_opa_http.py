"""The HTTP part of the OPA input document (attributes.request.http, parsed_path,
parsed_query) as opa-envoy-plugin builds it from Envoy's HTTP CheckRequest, and the
cache key leaving out the per-request id."""

from __future__ import annotations

import pytest

from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Destination, ServiceName, SpiffeID
from gwcore.policy.opa_http import http_request_attributes, parsed_path_and_query
from gwcore.policy.opa_input import build_input, cache_key

TD = "11111111-2222-3333-4444-555555555555.consul"


def facts(path: str = "/a/b?x=1", **kw) -> HttpRequestFacts:
    headers = kw.pop(
        "headers",
        (("host", "billing"), ("accept", "a"), ("accept", "b"), ("content-length", "12")),
    )
    return HttpRequestFacts(
        kw.pop("method", "POST"), path, authority="billing", headers=headers, **kw
    )


def test_request_http_fields_are_envoys():
    """method, lower-case headers with pseudo-headers and repeats joined by ',', path
    with query, host, scheme, protocol and size as a protobuf-JSON int64 string."""
    http = http_request_attributes(facts(protocol="HTTP/2"))["http"]
    assert http == {
        "method": "POST",
        "headers": {
            ":authority": "billing",
            ":method": "POST",
            ":path": "/a/b?x=1",
            ":scheme": "https",
            "accept": "a,b",
            "content-length": "12",
        },
        "path": "/a/b?x=1",
        "host": "billing",
        "scheme": "https",
        "protocol": "HTTP/2",
        "size": "12",
    }


def test_request_id_comes_from_x_request_id_and_stays_out_of_the_cache_key():
    """``id`` is the client's x-request-id; two requests differing only in it share a
    cache key, while any other difference (a header, the path) changes the key."""

    def document(request_id: str, path: str = "/a") -> dict:
        headers = (("x-request-id", request_id),)
        return build_input(
            site="main", gateway_name="gw", datacenter="dc1", trust_domain=TD,
            source=SpiffeID(TD, "default", "dc1", "web"),
            destination=Destination(ServiceName("billing"), "dc1"), sni="billing.x",
            client_address="127.0.0.1", client_port=5000, gateway_address="127.0.0.1",
            gateway_port=8443, http=facts(path, headers=headers, method="GET"),
        )  # fmt: skip

    one, two = document("r-1"), document("r-2")
    assert one["attributes"]["request"]["http"]["id"] == "r-1"
    assert cache_key(one) != cache_key(document("r-1", "/b"))
    # The id is out of the key, but the x-request-id header is still in the document.
    assert one["attributes"]["request"]["http"]["headers"]["x-request-id"] == "r-1"
    assert cache_key(one) != cache_key(two)
    one["attributes"]["request"]["http"]["headers"].pop("x-request-id")
    two["attributes"]["request"]["http"]["headers"].pop("x-request-id")
    assert cache_key(one) == cache_key(two)
    assert "id" in one["attributes"]["request"]["http"]  # the document itself keeps it


@pytest.mark.parametrize(
    ("path", "parsed_path", "parsed_query"),
    [
        ("/", [""], {}),
        ("/a/b", ["a", "b"], {}),
        ("/a/b/", ["a", "b", ""], {}),
        ("/a%20b/c%2Fd", ["a b", "c", "d"], {}),
        ("/p?x=1&x=2&y=", ["p"], {"x": ["1", "2"], "y": [""]}),
        ("/p?a+b=c+d&e%3D=%26", ["p"], {"a b": ["c d"], "e=": ["&"]}),
        ("/p?flag&&z=1", ["p"], {"flag": [""], "z": ["1"]}),
        ("/p?a=1;b=2&c=3", ["p"], {"c": ["3"]}),
        ("/p?bad=%zz&ok=1", ["p"], {"ok": ["1"]}),
    ],
)
def test_parsed_path_and_query_follow_go(path, parsed_path, parsed_query):
    """Go's url.Parse + Query(): decoded path split on '/', query pairs split on '&',
    '+' a space, pairs with ';' or a bad escape dropped."""
    assert parsed_path_and_query(path) == (parsed_path, parsed_query)


def test_l4_document_is_unchanged():
    """Without http the document has no attributes.request and the empty parses."""
    document = build_input(
        site="main", gateway_name="gw", datacenter="dc1", trust_domain=TD,
        source=SpiffeID(TD, "default", "dc1", "web"),
        destination=Destination(ServiceName("billing"), "dc1"), sni="billing.x",
        client_address="127.0.0.1", client_port=5000, gateway_address="127.0.0.1",
        gateway_port=8443,
    )  # fmt: skip
    assert "request" not in document["attributes"]
    assert (document["parsed_path"], document["parsed_query"]) == ([""], {})
