"""Fuzz targets: each takes the fuzzer's bytes and returns, or raises on a crash.

A target catches only the rejection its parser documents (``IdentityError`` from the
SPIFFE parser, ``ConfigError`` from config validation, ``ValueError`` from the Consul
CA answers...); any other exception escapes and the fuzzer records it as a crash. Where
a parser promises a property (the ClientHello parser answers the same whatever the
pieces the bytes arrive in; a parsed SPIFFE ID round-trips) the target asserts it, so a
broken promise is a crash too.

:data:`TARGETS` is the registry ``fuzz/run.py`` and ``tests/test_fuzz_corpus.py`` read.
A target whose code is not on this branch yet is registered as ``None`` with the
reason (see :data:`PENDING`), so it shows up in ``make fuzz`` output rather than being
forgotten.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from gwcore.contract import pki
from gwcore.policy import http2_rules
from gwcore.policy.clienthello import NEED_MORE, ClientHello, ClientHelloParser, HelloError
from gwcore.policy.config import ConfigError, parse_config
from gwcore.policy.consul_shapes import (
    build_destinations,
    build_intentions,
    build_mesh_destinations,
    build_mesh_gateways,
    decode_documents,
    parse_documents,
)
from gwcore.policy.http_facts import HttpRequestFacts, PathNormalization
from gwcore.policy.http_headers import (
    HOP_BY_HOP,
    MalformedHeaders,
    check_h2_fields,
    h1_to_h2_request,
    h2_to_h1_request,
    strip_hop_by_hop,
)
from gwcore.policy.http_path import PathRejected, RedirectPath, normalize_path
from gwcore.policy.intentions import IntentionSet
from gwcore.policy.l7_permissions import permission_from_mapping
from gwcore.policy.model import ServiceName, Verdict
from gwcore.policy.sni import normalize_sni, parse_service_sni
from gwcore.policy.spiffe import IdentityError, identity_from_der, parse_spiffe_id
from gwcore.policy.xfcc_input import forwardable_xfcc, well_formed_xfcc

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


def _hello_answer(result: object) -> tuple:
    """What must not depend on how the bytes were split (details may name a position)."""
    if result is NEED_MORE:
        return ("need_more",)
    if isinstance(result, ClientHello):
        return ("hello", result.server_name, result.alpn, result.length)
    if isinstance(result, HelloError):
        return ("error", result.reason)
    raise AssertionError(f"ClientHelloParser answered {result!r}")


def clienthello(data: bytes) -> None:
    """ClientHello/SNI: whole vs split feeding agree; the SNI goes through the SNI rules."""
    if not data:
        return
    step, stream = data[0] % 64 + 1, data[1:]
    whole = ClientHelloParser()
    first = _hello_answer(whole.feed(stream))
    pieced = ClientHelloParser()
    answer = _hello_answer(NEED_MORE)
    for i in range(0, len(stream), step):
        answer = _hello_answer(pieced.feed(stream[i : i + step]))
        if answer[0] != "need_more":
            break
    assert answer == first, (first, answer)
    final = _hello_answer(whole.eof())
    if first[0] != "need_more":
        assert final == first, (first, final)
    if final[0] == "hello" and final[1] is not None:
        name = normalize_sni(final[1])
        if name is not None:
            assert normalize_sni(name) == name
            parse_service_sni(name, TRUST_DOMAIN)


def spiffe_id(data: bytes) -> None:
    """SPIFFE ID parsing: IdentityError or an ID whose canonical URI parses to itself."""
    uri = data.decode("utf-8", "surrogateescape")
    try:
        identity = parse_spiffe_id(uri)
    except IdentityError as e:
        assert e.reason == "bad_spiffe_id", e.reason
        return
    assert parse_spiffe_id(identity.uri) == identity


def certificate_san(data: bytes) -> None:
    """SAN extraction from (malformed) DER certificates: an identity or IdentityError."""
    with contextlib.suppress(IdentityError):
        identity_from_der(data, frozenset({TRUST_DOMAIN}))
    try:
        cert = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        return  # not a certificate: refused above as bad_spiffe_id
    # The helpers /certs and the providers use on certificates they hold.
    try:
        pki.uri_sans(cert)
        pki.trust_domain_of(cert)
    except ValueError:
        pass  # documented: cryptography's error for an extension that does not parse


def consul_json(data: bytes) -> None:
    """Every Consul JSON shape the catalogs read: files, API answers, then the builders."""
    docs, _ = decode_documents("fuzz.json", data)
    build_destinations(docs, "gateway", "dc1")
    build_intentions(docs)
    build_mesh_gateways(docs, "dc1")
    build_mesh_destinations(docs, "dc1")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return
    # The consul_catalog source's items: gateway-services, health answers, defaults.
    items = [("consul:gateway-services", value), ("consul:health/service/x", value)]
    docs, _ = parse_documents(items)
    build_destinations(docs, "gateway", "dc1")
    _consul_api_answers(value)


def _consul_api_answers(value: object) -> None:
    # Imported here: plugins sit above policy, and only this target needs them.
    from gwcore.plugins.consul_certs import parse_leaf, parse_roots
    from gwcore.plugins.consul_intentions import intentions_from_match

    for parse in (parse_roots, lambda v: parse_leaf(v, "spiffe://x/ns/default/dc/dc1/svc/gw")):
        with contextlib.suppress(ValueError):
            parse(value)
    with contextlib.suppress(ValueError):
        intentions_from_match(value)


_BASE_DIR = Path(tempfile.gettempdir())


def config_toml(data: bytes) -> None:
    """TOML config validation: a GatewayConfig or ConfigError, never anything else."""
    try:
        text = data.decode("utf-8")
        table = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # load_config reports these as "(syntax)" problems
    try:
        parse_config(table, "fuzz.toml", _BASE_DIR)
    except ConfigError as e:
        assert e.problems, "ConfigError without a problem"


_CHECKED = Path(tempfile.mkdtemp(prefix="tgw-fuzz-")) / "tgw.toml"


def config_check(data: bytes) -> None:
    """``tgw check-config`` on the bytes: plugin sections validated too; never raises."""
    from gwcore.runtime.config_check import check_config  # above policy: plugins are loaded

    _CHECKED.write_bytes(data)
    result = check_config(_CHECKED)
    assert result.ok or result.problems


def _bexpr_target() -> Callable[[bytes], None] | None:
    """Consul's filter language, once ``gwcore/policy/bexpr.py`` (issue 18) is present."""
    try:
        from gwcore.policy import bexpr  # type: ignore[attr-defined]
    except ImportError:
        return None
    datum = bexpr.Struct(
        Node=bexpr.Struct(Node="n1", Meta={"rack": "r1"}, Datacenter="dc1"),
        Service=bexpr.Struct(
            ID="web-1",
            Service="web",
            Tags=["v1", "canary"],
            Port=8080,
            Meta={"version": "1", "a.b": "x"},
            Weights=bexpr.Struct(Passing=1, Warning=1),
        ),
        Checks=[bexpr.Struct(Status="passing", CheckID="c1")],
    )

    def target(data: bytes) -> None:
        """Parse, or BexprSyntaxError; a parsed filter evaluates, or BexprEvalError."""
        text = data.decode("utf-8", "replace")
        try:
            expression = bexpr.parse(text)
        except bexpr.BexprSyntaxError:
            return
        result = None
        with contextlib.suppress(bexpr.BexprEvalError):
            result = bexpr.evaluate(expression, datum)
        assert result in (None, True, False), result

    return target


_ESCAPED_SLASH_ACTIONS = (
    "",
    "KEEP_UNCHANGED",
    "REJECT_REQUEST",
    "UNESCAPE_AND_REDIRECT",
    "UNESCAPE_AND_FORWARD",
)


def http_path(data: bytes) -> None:
    """L7 path normalisation (attacker-controlled request targets): a target is refused
    with ``PathRejected`` or normalised to an origin-form path (or ``*``) with no dot
    segment and no NUL, and normalising that again changes nothing. The first byte picks
    the ``mesh`` entry's options."""
    if not data:
        return
    flags, raw = data[0], data[1:].decode("latin-1")
    options = PathNormalization(
        insecure_disable_path_normalization=False,
        merge_slashes=bool(flags & 1),
        path_with_escaped_slashes_action=_ESCAPED_SLASH_ACTIONS[(flags >> 1) % 5],
    )
    method = "OPTIONS" if flags & 0x80 else "GET"
    try:
        result = normalize_path(raw, options, method=method)
    except PathRejected as e:
        assert e.reason and "/" not in e.reason, e.reason
        return
    path = result.split("?", 1)[0]
    assert path == "*" or path.startswith("/"), result
    segments = path.split("/")
    assert "." not in segments and ".." not in segments, result
    assert "\x00" not in result and "%00" not in path.lower(), result  # the query is kept as sent
    if isinstance(result, RedirectPath):
        return  # the client is sent there; it normalises again when it comes back
    assert normalize_path(str(result), options, method=method) == result, result


# --- L7: XFCC input, L7 permissions, HTTP/2 header rules -----------------------------

_GATEWAY_ELEMENT = (
    f"By=spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/gw;Hash=9f86d081884c7d65;"
    'Subject="CN=web,O=Acme\\, Inc.";'
    f"URI=spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web"
)


def _xfcc_elements(value: str) -> list[str]:
    """The oracle: a quote-aware reader of XFCC (``\\`` escapes inside quotes), as the
    upstream's parser would split the header into elements."""
    elements, current, quoted, escaped = [], [], False, False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            elements.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    elements.append("".join(current).strip())
    return elements


def xfcc_input(data: bytes) -> None:
    """Client-sent ``x-forwarded-client-cert`` values (one per line, latin-1 as the
    codecs decode them): ``forwardable_xfcc`` keeps every non-blank value or none; what
    it keeps, with the gateway's element appended (APPEND_FORWARD), is read by a
    quote-aware parser with the gateway's element last and whole (never swallowed into
    a client's quoted value, never split)."""
    from gwcore.policy.xfcc import apply_xfcc  # the builder the L7 path uses

    values = data.decode("latin-1").split("\n")
    kept = forwardable_xfcc(values)
    sent = [v for v in values if v.strip()]
    checks = [well_formed_xfcc(v) for v in sent]
    assert all(isinstance(c, bool) for c in checks)
    assert kept == (sent if all(checks) else []), (kept, sent)
    header = apply_xfcc(kept, _GATEWAY_ELEMENT, sanitize=False)
    assert header is not None and well_formed_xfcc(header), header
    assert _xfcc_elements(header)[-1] == _GATEWAY_ELEMENT, header
    assert apply_xfcc(values, _GATEWAY_ELEMENT, sanitize=True) is None


def _request_facts(data: bytes) -> HttpRequestFacts:
    """Request facts from bytes: lines ``method``, ``path``, ``authority``, then
    ``name:value`` headers (names lower-case, as the codecs give them)."""
    lines = data.decode("latin-1").split("\n")
    method, path, authority = [*lines, "", "", ""][:3]
    headers = []
    for line in lines[3:]:
        name, _, value = line.partition(":")
        headers.append((name.lower(), value))
    return HttpRequestFacts(
        method=method, path=path, authority=authority, headers=tuple(headers), original_path=path
    )


_WEB = ServiceName("web")
_BILLING = ServiceName("billing")


def l7_permission(data: bytes) -> None:
    """L7 intention permissions: JSON (before the first NUL byte; an object is one
    permission, a list is a source's ``Permissions``) and a request (after it). Each
    object is a permission or the documented ``ValueError`` naming its problems, and a
    permission survives its Consul JSON shape unchanged. The same list as a
    ``service-intentions`` entry from a catalog file: problems, or a decision per
    request that is deterministic and is the first matching permission's action (none
    matching: abstain, the default policy decides)."""
    spec, _, request = data.partition(b"\x00")
    try:
        raw = json.loads(spec)
    except (ValueError, RecursionError):
        return
    items = raw if isinstance(raw, list) else [raw]
    facts = _request_facts(request)
    for item in items:
        if not isinstance(item, dict):
            continue
        try:
            permission = permission_from_mapping(item)
        except ValueError as e:
            assert str(e), "a ValueError without a problem"
            continue
        matched = permission.matches(facts)
        assert matched in (True, False) and permission.matches(facts) is matched
        again = permission_from_mapping(permission.as_consul())
        assert again == permission and again.matches(facts) is matched, permission
        assert permission.describe()
    entry = {"Kind": "service-intentions", "Name": "billing"}
    entry["Sources"] = [{"Name": "web", "Permissions": items}]
    docs, problems = decode_documents("fuzz.json", json.dumps(entry).encode())
    intentions = build_intentions(docs)
    if problems or not intentions:
        return
    (intention,) = intentions
    engine = IntentionSet(intentions)
    decision = engine.decide(_WEB, _BILLING, facts)
    assert engine.decide(_WEB, _BILLING, facts) == decision
    first = next((p for p in intention.permissions if p.matches(facts)), None)
    expected = (
        Verdict.ABSTAIN
        if first is None
        else Verdict.ALLOW
        if first.action == "allow"
        else Verdict.DENY
    )
    assert decision.verdict is expected, (decision, first)
    # On an L4 connection (no request), L7 permissions deny (as Consul).
    assert engine.decide(_WEB, _BILLING).verdict is Verdict.DENY


_H2_REFUSALS = frozenset({"bad_pseudo_header", "connect_refused", "missing_pseudo_header"})


def _header_block(data: bytes) -> list[tuple[bytes, bytes]]:
    """One field per line, name and value split at the first TAB."""
    block = []
    for line in data.split(b"\n"):
        name, _, value = line.partition(b"\t")
        block.append((name, value))
    return block


def http2_headers(data: bytes) -> None:
    """HTTP/2 header rules on an arbitrary header block (``http2_rules``,
    ``http_headers``): a request's facts or one of the documented refusals (facts
    always have a method other than CONNECT, a path and no pseudo-header among the
    headers); a malformed block is ``MalformedHeaders`` and nothing else; a forwarded
    HTTP/1.1 request carries no hop-by-hop field and, turned into HTTP/2, passes
    HTTP/2's own field rules and converts back to the same method and target. The
    preface check and the gRPC local reply hold for any bytes."""
    block = _header_block(data)
    facts = http2_rules.request_facts(block)
    if isinstance(facts, str):
        assert facts in _H2_REFUSALS, facts
    else:
        assert facts.method and facts.method != "CONNECT" and facts.path, facts
        assert not any(name.startswith(":") for name, _ in facts.headers), facts
        assert all(name == name.lower() for name, _ in facts.headers), facts
    assert http2_rules.is_grpc(block) in (True, False)
    state = http2_rules.preface_state(data)
    prefix = http2_rules.PREFACE[: len(data)]
    assert state is (
        True if data.startswith(http2_rules.PREFACE) else None if data == prefix else False
    )
    status = int.from_bytes(data[:2] or b"\x00", "big") % 600
    reply = http2_rules.grpc_local_reply(status, data.decode("latin-1"))
    message = dict(reply)[b"grpc-message"]
    assert all(0x20 <= b <= 0x7E for b in message), message
    assert dict(reply)[b"grpc-status"].isdigit()

    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in block]
    try:
        check_h2_fields(text)
    except MalformedHeaders as e:
        assert e.reason, e
    try:
        h2_to_h1_request(text)
    except MalformedHeaders as e:
        assert e.reason, e
    fields = [(n, v) for n, v in text if n and not n.startswith(":")]
    for to_http2 in (False, True):
        kept = strip_hop_by_hop(fields, to_http2=to_http2)
        for name, value in kept:
            lower = name.lower()
            assert lower not in HOP_BY_HOP or (to_http2 and lower == "te"), (name, value)
    method, target = (text[0][0] or "GET"), (text[0][1] or "/")
    if method == "CONNECT" or method.startswith(":"):
        return
    h2_block = h1_to_h2_request(method, target, fields, scheme="https")
    check_h2_fields([(n, v) for n, v in h2_block if not n.startswith(":")])
    back = h2_to_h1_request(h2_block)
    assert (back.method, back.target) == (method, target), (back, method, target)


TARGETS: dict[str, Callable[[bytes], None] | None] = {
    "clienthello": clienthello,
    "spiffe_id": spiffe_id,
    "certificate_san": certificate_san,
    "consul_json": consul_json,
    "config_toml": config_toml,
    "config_check": config_check,
    "bexpr": _bexpr_target(),
    "http_path": http_path,
    "xfcc_input": xfcc_input,
    "l7_permission": l7_permission,
    "http2_headers": http2_headers,
}

PENDING: dict[str, str] = {
    "bexpr": "gwcore/policy/bexpr.py (issue 18) is not in this tree",
}
