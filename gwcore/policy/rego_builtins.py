"""Which OPA built-ins the embedded evaluator may run, and where a policy calls the others.

rego-cpp (regopy) implements most of OPA's built-ins, but not all: a call to one it
declares without implementing (``net.cidr_contains``, ``http.send``...) evaluates to
*undefined* and the policy goes on, so ``blocked if net.cidr_contains(...)`` /
``allow if not blocked`` allows. Some it implements differently (the x509 parsers
return three fields of a certificate). The rule: every built-in a policy calls runs
exactly as in OPA, or the policy is refused when it loads (check-config, start,
reload), naming the built-in and ``file:line:column``.

``OPA_BUILTINS`` is OPA's catalogue of built-in functions (OPA v1 capabilities, called
by name; operators such as ``==`` or ``+`` are not called by name). A call is found by
scanning the module's tokens outside comments and strings for ``name(`` where
``name`` (dotted or not, not itself part of a longer reference) is in the
catalogue; the evaluator's own ``is_builtin`` says whether it implements it, and
:data:`UNLIKE_OPA` lists those it implements unlike OPA. A call that is not in the
catalogue is a function of the policy, or unknown to OPA and rego-cpp alike (an
evaluation error, so a deny: never undefined-and-continue).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from gwcore.policy.opa_input import PolicyProblem

_CATALOGUE = """
    abs all any array.concat array.reverse array.slice base64.decode base64.encode
    base64.is_valid base64url.decode base64url.encode base64url.encode_no_pad bits.and
    bits.lsh bits.negate bits.or bits.rsh bits.xor cast_array cast_boolean cast_null
    cast_object cast_set cast_string ceil concat contains count crypto.hmac.equal
    crypto.hmac.md5 crypto.hmac.sha1 crypto.hmac.sha256 crypto.hmac.sha512 crypto.md5
    crypto.parse_private_keys crypto.sha1 crypto.sha256
    crypto.x509.parse_and_verify_certificates
    crypto.x509.parse_and_verify_certificates_with_options
    crypto.x509.parse_certificate_request crypto.x509.parse_certificates
    crypto.x509.parse_keypair crypto.x509.parse_rsa_private_key endswith floor format_int
    glob.match glob.quote_meta graph.reachable graph.reachable_paths graphql.is_valid
    graphql.parse graphql.parse_and_verify graphql.parse_query graphql.parse_schema
    graphql.schema_is_valid hex.decode hex.encode http.send indexof indexof_n intersection
    io.jwt.decode io.jwt.decode_verify io.jwt.encode_sign io.jwt.encode_sign_raw
    io.jwt.verify_eddsa io.jwt.verify_es256 io.jwt.verify_es384 io.jwt.verify_es512
    io.jwt.verify_hs256 io.jwt.verify_hs384 io.jwt.verify_hs512 io.jwt.verify_ps256
    io.jwt.verify_ps384 io.jwt.verify_ps512 io.jwt.verify_rs256 io.jwt.verify_rs384
    io.jwt.verify_rs512 is_array is_boolean is_null is_number is_object is_set is_string
    json.filter json.is_valid json.marshal json.marshal_with_options json.match_schema
    json.patch json.remove json.unmarshal json.verify_schema lower max min
    net.cidr_contains net.cidr_contains_matches net.cidr_expand net.cidr_intersects
    net.cidr_is_valid net.cidr_merge net.cidr_overlap net.lookup_ip_addr numbers.range
    numbers.range_step object.filter object.get object.keys object.remove object.subset
    object.union object.union_n opa.runtime print product providers.aws.sign_req
    rand.intn re_match regex.find_all_string_submatch_n regex.find_n regex.globs_match
    regex.is_valid regex.match regex.replace regex.split regex.template_match
    rego.metadata.chain rego.metadata.rule rego.parse_module replace round semver.compare
    semver.is_valid set_diff sort split sprintf startswith strings.any_prefix_match
    strings.any_suffix_match strings.count strings.render_template strings.replace_n
    strings.reverse substring sum time.add_date time.clock time.date time.diff
    time.format time.now_ns time.parse_duration_ns time.parse_ns time.parse_rfc3339_ns
    time.weekday to_number trace trim trim_left trim_prefix trim_right trim_space
    trim_suffix type_name union units.parse units.parse_bytes upper urlquery.decode
    urlquery.decode_object urlquery.encode urlquery.encode_object uuid.parse uuid.rfc4122
    walk yaml.is_valid yaml.marshal yaml.unmarshal
"""
OPA_BUILTINS = frozenset(_CATALOGUE.split())

# rego-cpp runs `print` as a statement of its own (it writes to the process's stdout),
# so its is_builtin() says no although calls work.
_NATIVE = frozenset({"print"})

_X509_SUBSET = (
    "rego-cpp returns only DNSNames, Subject.CommonName and URIStrings of each "
    "certificate where OPA returns the whole parsed certificate"
)
UNLIKE_OPA: Mapping[str, str] = {
    "crypto.x509.parse_certificates": _X509_SUBSET,
    "crypto.x509.parse_and_verify_certificates": _X509_SUBSET,
    "crypto.x509.parse_and_verify_certificates_with_options": _X509_SUBSET,
    "crypto.x509.parse_certificate_request": _X509_SUBSET,
    "crypto.parse_private_keys": "rego-cpp returns no key for PEM keys OPA parses",
}

# Comments and strings are blanked first (same length, newlines kept, so positions stay
# true), so a name inside them is never taken for a call. Then a call is a dotted name
# followed by `(`, with any white space (newlines too) around its dots and before the
# parenthesis, as rego-cpp's parser allows: `net .cidr_contains\n(` is the built-in.
_SKIP_RE = re.compile(r"""\#[^\n]*|"(?:[^"\\\n]|\\.)*"|`[^`]*`""")
_CALL_RE = re.compile(r"(?<!\w)(?P<name>[A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\(")
_SPACE_RE = re.compile(r"\s+")


def _blank(text: str) -> str:
    return _SKIP_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def builtin_calls(text: str) -> Iterator[tuple[str, int, int]]:
    """``(name, line, column)`` (1-based, column in characters) of every call of an OPA
    built-in in one module's ``text``. A name after a dot is the tail of a longer
    reference (``data.lib.net.cidr_contains(`` is the policy's own function)."""
    code = _blank(text)
    for match in _CALL_RE.finditer(code):
        name = _SPACE_RE.sub("", match.group("name"))
        if name not in OPA_BUILTINS:
            continue
        start = match.start("name")
        previous = start - 1
        while previous >= 0 and code[previous].isspace():
            previous -= 1
        if previous >= 0 and code[previous] == ".":
            continue
        line = text.count("\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1) + 1
        yield name, line, column


def refusal(name: str, available: Callable[[str], bool]) -> str | None:
    """Why a call of the built-in ``name`` cannot run in the embedded evaluator, or None."""
    if name in UNLIKE_OPA:
        return f"built-in {name} is refused: {UNLIKE_OPA[name]}"
    if name not in _NATIVE and not available(name):
        return (
            f"built-in {name} is not implemented by the embedded evaluator (rego-cpp), "
            "which would make it undefined instead of failing"
        )
    return None


def unsupported_calls(
    sources: Mapping[str, str], available: Callable[[str], bool]
) -> list[PolicyProblem]:
    """A problem for every call the embedded evaluator cannot make exactly as OPA does,
    in file and line order. ``available`` is the evaluator's ``is_builtin``."""
    problems: list[PolicyProblem] = []
    for file in sorted(sources):
        for name, line, column in builtin_calls(sources[file]):
            why = refusal(name, available)
            if why is not None:
                hint = " (run this policy on an OPA server: url instead of policies)"
                problems.append(PolicyProblem(file, line, column, why + hint))
    return problems
