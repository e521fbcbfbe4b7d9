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
from gwcore.policy.http_facts import PathNormalization
from gwcore.policy.http_path import PathRejected, RedirectPath, normalize_path
from gwcore.policy.sni import normalize_sni, parse_service_sni
from gwcore.policy.spiffe import IdentityError, identity_from_der, parse_spiffe_id

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


TARGETS: dict[str, Callable[[bytes], None] | None] = {
    "clienthello": clienthello,
    "spiffe_id": spiffe_id,
    "certificate_san": certificate_san,
    "consul_json": consul_json,
    "config_toml": config_toml,
    "config_check": config_check,
    "bexpr": _bexpr_target(),
    "http_path": http_path,
}

PENDING: dict[str, str] = {
    "bexpr": "gwcore/policy/bexpr.py (issue 18) is not in this tree",
}
