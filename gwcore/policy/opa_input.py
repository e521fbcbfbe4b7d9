"""What the OPA engine sends to Rego and how it reads the answer (sans-IO).

The input document is the one opa-envoy-plugin builds from Envoy's *network*
``ext_authz`` check (Envoy's ``CheckRequest`` in protobuf JSON, so
``lowerCamelCase`` keys and empty fields left out, plus the plugin's own top-level
keys), so a policy written for Envoy's TCP check runs unchanged::

    input.attributes.source.address.socketAddress      {address, portValue} of the client
    input.attributes.source.principal                  client SPIFFE ID (URI SAN)
    input.attributes.source.certificate                URL-encoded PEM (include_peer_certificate)
    input.attributes.destination.address.socketAddress the connection's local address
    input.attributes.destination.principal             destination SPIFFE ID
    input.attributes.destination.service               requested server name (Envoy's TCP check)
    input.attributes.destination.labels                destination catalog metadata
    input.attributes.tlsSession.sni                    requested server name, as sent
    input.version                                      {"ext_authz": "v3", "encoding": "protojson"}
    input.attributes.request.http                      the request, at L7 destinations
                                                       (``opa_http.py``)
    input.parsed_path / parsed_query                   [""] / {} without an HTTP request
    input.parsed_body / truncated_body                 null / false
    input.tgw                                          tgw's own facts (the one extra key)

``docs/opa.md`` documents every key; :func:`build_input` is the one place that
makes the document. A policy answers with a boolean, or an object with a boolean
``allowed`` and optional ``reason``, ``headers``, ``response_headers_to_add``,
``request_headers_to_remove``, ``body``, ``http_status`` and ``dynamic_metadata``,
each checked as opa-envoy-plugin checks it; anything else (including an undefined
result) is an :class:`Evaluation` error, which the engine turns into a deny (or,
with ``fail_open``, a counted allow).

Also here: the OPA REST data API's request and response bodies, and reading a
rego-cpp compile error into ``file:line:column: message``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Destination, SpiffeID
from gwcore.policy.opa_http import (
    http_cache_key_document,
    http_request_attributes,
    parsed_path_and_query,
)
from gwcore.policy.opa_result import result_object_problem

MAX_REASON_CHARS = 500

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def valid_path(path: str) -> bool:
    """``envoy/authz/allow``: a rule path under ``data``, slash-separated as in OPA's API."""
    return bool(_PATH_RE.match(path))


def rule_name(path: str) -> str:
    """The Rego reference for a slash path (``data.envoy.authz.allow``), for reasons."""
    return "data." + path.replace("/", ".")


def destination_principal(destination: Destination, trust_domain: str) -> str:
    """The SPIFFE ID the gateway presents for ``destination`` (its leaf's URI SAN)."""
    service = destination.service
    return SpiffeID(
        trust_domain=trust_domain,
        namespace=service.namespace,
        datacenter=destination.datacenter,
        name=service.name,
        partition=service.partition,
    ).uri


def _socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socketAddress": {"address": address, "portValue": port}}


# opa-envoy-plugin's v3 marker and what it parses out of an absent HTTP request.
EXT_AUTHZ_VERSION = {"ext_authz": "v3", "encoding": "protojson"}


def url_encoded_pem(pem: str) -> str:
    """A PEM certificate as Envoy's ``urlEncodedPemEncodedPeerCertificate`` gives it:
    every byte but the RFC 3986 unreserved ones percent-encoded."""
    return quote(pem, safe="")


def build_input(
    *,
    site: str,
    gateway_name: str,
    datacenter: str,
    trust_domain: str,
    source: SpiffeID,
    destination: Destination,
    sni: str,
    client_address: str,
    client_port: int,
    gateway_address: str,
    gateway_port: int,
    requested_server_name: str = "",
    peer_certificate_pem: str | None = None,
    http: HttpRequestFacts | None = None,
) -> dict[str, Any]:
    """The input document for one connection (see the module docstring and docs/opa.md).

    ``sni`` is the normalised name tgw routed on; ``requested_server_name`` the name
    as the client sent it (``sni`` when not known). ``peer_certificate_pem`` is set
    only with ``include_peer_certificate``. ``http`` is the request being decided at
    an L7 destination (``None`` for an L4 connection). Only JSON types; the destination's
    metadata is copied (sorted) so the document never aliases catalog state.
    """
    labels = {k: destination.meta[k] for k in sorted(destination.meta)}
    server_name = requested_server_name or sni
    source_peer: dict[str, Any] = {
        "address": _socket_address(client_address, client_port),
        "principal": source.uri,
    }
    if peer_certificate_pem:
        source_peer["certificate"] = url_encoded_pem(peer_certificate_pem)
    destination_peer: dict[str, Any] = {
        "address": _socket_address(gateway_address, gateway_port),
        "principal": destination_principal(destination, trust_domain),
    }
    if server_name:  # protobuf JSON leaves empty strings and maps out
        destination_peer["service"] = server_name
    if labels:
        destination_peer["labels"] = labels
    attributes: dict[str, Any] = {"source": source_peer, "destination": destination_peer}
    if server_name:
        attributes["tlsSession"] = {"sni": server_name}
    parsed_path: list[str] = [""]
    parsed_query: dict[str, list[str]] = {}
    if http is not None:
        attributes["request"] = http_request_attributes(http)
        parsed_path, parsed_query = parsed_path_and_query(http.path)
    return {
        "attributes": attributes,
        "version": dict(EXT_AUTHZ_VERSION),
        "parsed_path": parsed_path,
        "parsed_query": parsed_query,
        "parsed_body": None,
        "truncated_body": False,
        "tgw": {
            "site": site,
            "gateway": gateway_name,
            "datacenter": datacenter,
            "trust_domain": trust_domain,
            "sni": sni,
            "source": {
                "kind": source.kind,
                "service": source.name,
                "namespace": source.namespace,
                "partition": source.partition,
                "datacenter": source.datacenter,
                "trust_domain": source.trust_domain,
            },
            "destination": {
                "service": destination.name,
                "namespace": destination.service.namespace,
                "partition": destination.service.partition,
                "datacenter": destination.datacenter,
                "protocol": destination.protocol,
                "meta": labels,
            },
        },
    }


def cache_key(document: Mapping[str, Any]) -> str:
    """The decision cache's key for ``document``: all of it, canonically serialised,
    except a request's ``attributes.request.http.id`` (``opa_http.py`` says why)."""
    return json.dumps(http_cache_key_document(document), sort_keys=True, separators=(",", ":"))


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What a policy said: ``allowed`` with a ``reason``, or an ``error`` (then ``allowed``
    is ``None``). ``error_kind`` is one of a fixed set (a metric label): ``undefined``,
    ``bad_result``, ``evaluation``, ``no_policy``, ``timeout``, ``unavailable``,
    ``http_status``, ``bad_response``."""

    allowed: bool | None
    reason: str
    error_kind: str = ""

    @property
    def failed(self) -> bool:
        return self.allowed is None

    @classmethod
    def error(cls, kind: str, reason: str) -> Evaluation:
        return cls(None, _clip(reason), kind)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


def interpret(path: str, defined: bool, value: object) -> Evaluation:
    """Read the value of the rule at ``path`` (``defined`` false: the rule had no value).

    ``true``/``false`` decide with the rule name as the reason; ``{"allowed": bool,
    "reason": str}`` decides with the policy's own reason (the rule name when it gave
    none, or a reason that is not a non-empty string), once its other fields passed
    opa-envoy-plugin's checks (:mod:`gwcore.policy.opa_result`). Anything else is an
    error naming what came back.
    """
    rule = rule_name(path)
    if not defined:
        return Evaluation.error("undefined", f"{rule} is undefined")
    if isinstance(value, bool):
        return Evaluation(value, f"{rule} = {'true' if value else 'false'}")
    if isinstance(value, Mapping) and isinstance(value.get("allowed"), bool):
        allowed = bool(value["allowed"])
        problem = result_object_problem(value, allowed)
        if problem is not None:
            return Evaluation.error("bad_result", f"{rule}: {problem} (as opa-envoy-plugin)")
        given = value.get("reason")
        if isinstance(given, str) and given:
            return Evaluation(allowed, _clip(given))
        return Evaluation(allowed, f"{rule}.allowed = {'true' if allowed else 'false'}")
    shown = json.dumps(value, default=str)
    return Evaluation.error(
        "bad_result",
        f"{rule} is neither a boolean nor an object with a boolean 'allowed': {shown}",
    )


# --- the OPA REST data API -----------------------------------------------------------


def data_api_path(path: str) -> str:
    """``POST`` target for the rule at ``path``: ``/v1/data/envoy/authz/allow``."""
    return f"/v1/data/{path}"


def data_api_body(input_document: Mapping[str, Any]) -> bytes:
    return json.dumps({"input": input_document}, separators=(",", ":")).encode()


def read_data_api_response(path: str, status: int, body: bytes) -> Evaluation:
    """Interpret OPA's answer to ``POST /v1/data/<path>``.

    200 with ``result`` is a value; 200 without it means undefined (OPA's
    convention). Any other status is an ``http_status`` error carrying OPA's own
    ``code``/``message`` when the body has them.
    """
    try:
        document = json.loads(body) if body else None
    except ValueError:
        document = None
    if status != 200:
        detail = ""
        if isinstance(document, Mapping):
            detail = ": " + " ".join(str(document[k]) for k in ("code", "message") if k in document)
        return Evaluation.error("http_status", f"OPA answered HTTP {status}{detail}")
    if not isinstance(document, Mapping):
        return Evaluation.error("bad_response", "OPA's answer is not a JSON object")
    evaluation = interpret(path, "result" in document, document.get("result"))
    decision_id = document.get("decision_id")
    if isinstance(decision_id, str) and decision_id and not evaluation.failed:
        return Evaluation(
            evaluation.allowed, _clip(f"{evaluation.reason} (decision_id {decision_id})")
        )
    return evaluation


# --- rego-cpp compile errors ---------------------------------------------------------

_ERROR_RE = re.compile(r"\(error (\d+):")
_MESSAGE_RE = re.compile(r"\(errormsg (\d+):")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One compile error: where (file, 1-based line and column) and what."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.message}"


def _length_prefixed(text: str, start: int, length: int) -> str:
    return text[start : start + length]


def parse_compile_errors(error_text: str, sources: Mapping[str, str]) -> list[PolicyProblem]:
    """Problems from a rego-cpp error document, with byte offsets turned into lines.

    rego-cpp reports ``(error <n>:<file>|<offset>|<length> (errormsg <n>:<text>) ...)``;
    ``sources`` maps the module names given to rego-cpp to their text. An error
    document in another shape yields one problem carrying its first line.
    """
    problems: list[PolicyProblem] = []
    for match in _ERROR_RE.finditer(error_text):
        name = _length_prefixed(error_text, match.end(), int(match.group(1)))
        rest = error_text[match.end() + len(name) :]
        offset_match = re.match(r"\|(\d+)\|(\d+)", rest)
        message_match = _MESSAGE_RE.search(rest)
        message = "compile error"
        if message_match:
            message = _length_prefixed(rest, message_match.end(), int(message_match.group(1)))
        line = column = 0
        source = sources.get(name)
        if offset_match and source is not None:
            offset = int(offset_match.group(1))  # in bytes, as is the column below
            before = source.encode()[:offset]
            line = before.count(b"\n") + 1
            column = offset - (before.rfind(b"\n") + 1) + 1
        problems.append(PolicyProblem(name, line, column, message))
    if not problems:
        first = next((ln for ln in error_text.splitlines() if ln.strip()), "compile error")
        problems.append(PolicyProblem("(policy)", 0, 0, first.strip()))
    return problems
