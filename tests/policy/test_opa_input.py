"""Building the Envoy-shaped OPA input, reading results and OPA's REST answers, and
turning rego-cpp compile errors into file:line:column (tables, no I/O)."""

from __future__ import annotations

import json

import pytest

from gwcore.policy.model import Destination, ServiceName, SpiffeID
from gwcore.policy.opa_input import (
    PolicyProblem,
    build_input,
    data_api_body,
    data_api_path,
    interpret,
    parse_compile_errors,
    read_data_api_response,
    url_encoded_pem,
    valid_path,
)

TD = "example.consul"


def test_input_has_the_envoy_network_ext_authz_shape():
    """The document opa-envoy-plugin builds from Envoy's network check: protobuf JSON of
    the CheckRequest (no source.service, destination.service = the server name as sent,
    empty fields left out) plus the plugin's version/parsed_* keys; tgw's facts under tgw."""
    document = build_input(
        site="main",
        gateway_name="legacy-gw",
        datacenter="dc1",
        trust_domain=TD,
        source=SpiffeID(TD, "default", "dc2", "web"),
        destination=Destination(
            ServiceName("billing", "pay"), "dc1", meta={"team": "payments", "a": "1"}
        ),
        sni="billing.pay.dc1.internal.example.consul",
        client_address="10.0.0.7",
        client_port=50123,
        gateway_address="10.0.0.1",
        gateway_port=8443,
        requested_server_name="Billing.pay.dc1.internal.example.consul.",
    )
    attributes = document["attributes"]
    assert attributes["source"] == {
        "address": {"socketAddress": {"address": "10.0.0.7", "portValue": 50123}},
        "principal": f"spiffe://{TD}/ns/default/dc/dc2/svc/web",
    }
    assert attributes["destination"] == {
        "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8443}},
        "principal": f"spiffe://{TD}/ns/pay/dc/dc1/svc/billing",
        "service": "Billing.pay.dc1.internal.example.consul.",
        "labels": {"a": "1", "team": "payments"},
    }
    assert list(attributes["destination"]["labels"]) == ["a", "team"]
    assert attributes["tlsSession"] == {"sni": "Billing.pay.dc1.internal.example.consul."}
    assert document["version"] == {"ext_authz": "v3", "encoding": "protojson"}
    assert (document["parsed_path"], document["parsed_query"]) == ([""], {})
    assert (document["parsed_body"], document["truncated_body"]) == (None, False)
    assert document["tgw"]["site"] == "main" and document["tgw"]["gateway"] == "legacy-gw"
    assert document["tgw"]["sni"] == "billing.pay.dc1.internal.example.consul"
    assert document["tgw"]["source"]["datacenter"] == "dc2"
    assert document["tgw"]["destination"]["namespace"] == "pay"
    assert json.loads(json.dumps(document)) == document  # JSON types only


def test_peer_certificate_is_url_encoded_like_envoys():
    """Envoy's urlEncodedPemEncodedPeerCertificate: every byte outside RFC 3986's
    unreserved set percent-encoded (newline, space, '+', '/', '=')."""
    pem = "-----BEGIN CERTIFICATE-----\nMIIB+/x=\n-----END CERTIFICATE-----\n"
    assert url_encoded_pem(pem) == (
        "-----BEGIN%20CERTIFICATE-----%0AMIIB%2B%2Fx%3D%0A-----END%20CERTIFICATE-----%0A"
    )


def test_empty_labels_are_left_out_as_protobuf_json_does():
    document = build_input(
        site="main",
        gateway_name="gw",
        datacenter="dc1",
        trust_domain=TD,
        source=SpiffeID(TD, "default", "dc1", "web"),
        destination=Destination(ServiceName("billing"), "dc1"),
        sni="billing.default.dc1.internal.example.consul",
        client_address="10.0.0.7",
        client_port=1,
        gateway_address="10.0.0.1",
        gateway_port=2,
    )
    assert "labels" not in document["attributes"]["destination"]
    assert "certificate" not in document["attributes"]["source"]
    assert document["attributes"]["tlsSession"]["sni"] == document["tgw"]["sni"]


@pytest.mark.parametrize(
    ("defined", "value", "allowed", "reason", "kind"),
    [
        (True, True, True, "data.envoy.authz.allow = true", ""),
        (True, False, False, "data.envoy.authz.allow = false", ""),
        (True, {"allowed": False, "reason": "closed"}, False, "closed", ""),
        (True, {"allowed": True}, True, "data.envoy.authz.allow.allowed = true", ""),
        (True, {"allowed": True, "reason": 3}, True, "data.envoy.authz.allow.allowed = true", ""),
        (False, None, None, "data.envoy.authz.allow is undefined", "undefined"),
        (True, "yes", None, None, "bad_result"),
        (True, {"allowed": "true"}, None, None, "bad_result"),
        (True, None, None, None, "bad_result"),
    ],
)
def test_interpret(defined, value, allowed, reason, kind):
    evaluation = interpret("envoy/authz/allow", defined, value)
    assert evaluation.allowed is allowed and evaluation.error_kind == kind
    if reason is not None:
        assert evaluation.reason == reason


def test_long_reasons_are_clipped():
    evaluation = interpret("a", True, {"allowed": False, "reason": "x" * 5000})
    assert len(evaluation.reason) == 500


@pytest.mark.parametrize(
    ("status", "body", "allowed", "kind", "reason_part"),
    [
        (200, b'{"result": true}', True, "", "data.p.allow = true"),
        (200, b'{"result": false, "decision_id": "d-1"}', False, "", "(decision_id d-1)"),
        (200, b"{}", None, "undefined", "is undefined"),
        (200, b"not json", None, "bad_response", "not a JSON object"),
        (
            500,
            b'{"code": "internal_error", "message": "conflict"}',
            None,
            "http_status",
            "HTTP 500: internal_error conflict",
        ),
        (400, b"", None, "http_status", "HTTP 400"),
    ],
)
def test_read_data_api_response(status, body, allowed, kind, reason_part):
    evaluation = read_data_api_response("p/allow", status, body)
    assert evaluation.allowed is allowed and evaluation.error_kind == kind
    assert reason_part in evaluation.reason


def test_data_api_request():
    assert data_api_path("envoy/authz/allow") == "/v1/data/envoy/authz/allow"
    assert json.loads(data_api_body({"a": 1})) == {"input": {"a": 1}}


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("envoy/authz/allow", True),
        ("allow", True),
        ("data.envoy.allow", False),
        ("/envoy/allow", False),
        ("envoy//allow", False),
        ("", False),
        ("a/b-c", False),
    ],
)
def test_valid_path(path, ok):
    assert valid_path(path) is ok


SOURCE = "package x\n\nallow if {\n  input.a == \n}\n"
# What rego-cpp 1.5.2 reports for SOURCE (an offset in bytes, then a length).
ERROR = """(rego-errorseq
  (error 6:p.rego|32|2
    (errormsg 24:Invalid boolean operator)
    (errorast |32|2
      (rego-equals |32|2))
    (rego-errorcode)))"""


def test_compile_error_offsets_become_lines_and_columns():
    assert parse_compile_errors(ERROR, {"p.rego": SOURCE}) == [
        PolicyProblem("p.rego", 4, 11, "Invalid boolean operator")
    ]
    assert str(parse_compile_errors(ERROR, {"p.rego": SOURCE})[0]) == (
        "p.rego:4:11: Invalid boolean operator"
    )


def test_compile_error_from_the_real_interpreter():
    """The parser agrees with what regopy raises today (guards against format drift)."""
    from regopy import Interpreter, LogLevel

    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    with pytest.raises(Exception) as raised:
        interpreter.add_module("/etc/p.rego", SOURCE)
    problems = parse_compile_errors(str(raised.value), {"/etc/p.rego": SOURCE})
    assert [str(p) for p in problems] == ["/etc/p.rego:4:11: Invalid boolean operator"]


def test_unrecognised_error_text_is_kept():
    assert parse_compile_errors("something odd\nmore", {}) == [
        PolicyProblem("(policy)", 0, 0, "something odd")
    ]
