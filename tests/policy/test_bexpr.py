"""gwcore.policy.bexpr against go-bexpr's grammar and evaluation rules (grammar.peg,
evaluate.go, and the cases of its evaluate_test.go), with property tests."""

from __future__ import annotations

import contextlib
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.policy.bexpr import (
    MAX_DEPTH,
    MAX_LENGTH,
    BexprError,
    BexprEvalError,
    BexprSyntaxError,
    Binary,
    Filter,
    Match,
    Not,
    Struct,
    evaluate,
    parse,
)


def instance(meta=None, tags=(), port=8080, node_meta=None, name="web") -> Struct:
    """A datum shaped like Consul's CheckServiceNode (structs are Structs, maps dicts)."""
    return Struct(
        Node=Struct(Node="n1", Address="10.0.0.1", Datacenter="dc1", Meta=dict(node_meta or {})),
        Service=Struct(
            ID=f"{name}-1",
            Service=name,
            Tags=list(tags),
            Meta=dict(meta or {}),
            Port=port,
            Weights=Struct(Passing=1, Warning=1),
            Connect=Struct(Native=False),
        ),
        Checks=[],
    )


DATUM = instance({"version": "v1", "a.b": "dotted"}, ["v1", "canary"], node_meta={"rack": "r1"})


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("Service.Meta.version == v1", True),  # an unquoted word is its own text
        ("Service.Meta.version == `v1`", True),
        ('Service.Meta.version == "v1"', True),
        ("Service.Meta.version == V1", False),  # case-sensitive values
        ("Service.Meta.version != v2", True),
        ('"canary" in Service.Tags', True),
        ("canary in Service.Tags", True),
        ("Service.Tags contains canary", True),
        ("Service.Tags not contains beta", True),
        ('"beta" not in Service.Tags', True),
        ("rack in Node.Meta", True),  # in on a map: the key
        ("r1 in Node.Meta", False),
        ('"eb" in Service.Service', True),  # in on a string: a substring
        ("Service.Port == 8080", True),
        ('Service.Port == "0x1F90"', True),  # ParseInt(s, 0, 64) on a quoted value
        ('Service.Port == "017620"', True),  # a leading 0 is octal in Go
        ("Service.Port != 80", True),
        ("Service.Connect.Native == false", True),
        ("Service.Connect.Native == 0", True),  # ParseBool
        ("Service.Meta.missing == x", False),  # a missing map key: NotPresentDisposition
        ("Service.Meta.missing != x", True),
        ("Service.Meta.missing is empty", True),
        ("Service.Meta.missing is not empty", False),
        ("Service.Meta.missing matches x", False),
        ("Service.Meta.missing not matches x", True),
        ("x in Service.Meta.missing", False),
        ("x not in Service.Meta.missing", True),
        ("Service.Tags is not empty", True),
        ("Checks is empty", True),
        ('Service.Meta.version matches "^v[0-9]+$"', True),
        ('Service.Meta.version matches "1"', True),  # unanchored, as Go's regexp.Match
        ('Service.Meta.version not matches "^v2"', True),
        ('Service.Meta["a.b"] == dotted', True),
        ('"/Service/Meta/version" == v1', True),  # a JSON pointer selector
        ("Service.Tags.1 == canary", True),
        ("not Service.Meta.version == v1", False),
        ("not not Service.Meta.version == v1", True),
        ("Service.Port == 1 or Service.Port == 8080", True),
        ("Service.Port == 8080 and Node.Meta.rack == r2", False),
        ("(Service.Port == 1 or Node.Meta.rack == r1) and Service.Service == web", True),
        ("  ( Service.Port==8080 )  ", True),
    ],
)
def test_evaluation_matches_go_bexpr(expression: str, expected: bool):
    """Each expression evaluates on a CheckServiceNode-shaped datum as go-bexpr does."""
    assert evaluate(parse(expression), DATUM) is expected


@pytest.mark.parametrize(
    "expression",
    [
        "Service.Port == abc",  # does not coerce to the field's kind
        "Service.Nope == 1",  # a struct field that does not exist
        "Service.Meta.a.b == 1",  # below a missing map key
        "Service.Tags matches x",  # matches needs a string
        "Service.Port is empty",
        "x in Service.Port",
        "Service.Weights == 1",
    ],
)
def test_evaluation_errors(expression: str):
    """What go-bexpr refuses to evaluate is an error here too, never a silent answer."""
    with pytest.raises(BexprEvalError):
        evaluate(parse(expression), DATUM)


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "Service.Port ==",
        "Service.Port == 0x1F",  # numbers are 0 / [1-9][0-9]* (.[0-9]+)?
        "a == 1abc",
        "(a == 1",
        "(a == 1))",
        'a == "x',
        'a matches "("',  # the regex is compiled (RE2) at parse time
        "a matches `\\C+(?<=x)`",  # look-behind is not RE2
        "a is nil",  # go-bexpr 0.1.16 only: refused, not guessed
        "any Service.Tags as t { t == x }",
        "x in 5",
        "a == 1 and",
        "a[1] == 2",
        'a["x" == 1',
        "not(a == 1)",  # "not" needs whitespace
        'a == "\\q"',
        "a = 1",
        "a == 1 AND b == 2",  # keywords are lower case
    ],
)
def test_syntax_errors(expression: str):
    """Expressions go-bexpr's grammar does not accept (or tgw refuses) raise BexprSyntaxError."""
    with pytest.raises(BexprSyntaxError):
        parse(expression)


def test_bounds():
    """Over-long or too deeply nested expressions are refused, not evaluated."""
    with pytest.raises(BexprSyntaxError, match="longer"):
        parse("a == 1 or " * (MAX_LENGTH // 10 + 1) + "a == 1")
    with pytest.raises(BexprSyntaxError, match="nested"):
        parse("(" * (MAX_DEPTH + 2) + "a == 1" + ")" * (MAX_DEPTH + 2))
    assert parse("(" * 10 + "a == 1" + ")" * 10) == Match(("a",), "==", "1")
    # a long flat chain is fine (no recursion per operand)
    chain = " or ".join(f"a == {i}" for i in range(300))
    assert evaluate(parse(chain), Struct(a=299)) is True


def test_empty_filter_matches_everything():
    """An empty Filter selects every instance (Consul: no filter, every instance)."""
    assert Filter.compile("")(DATUM) is True
    assert Filter.compile("Service.Port == 1")(DATUM) is False


# --- properties ------------------------------------------------------------------

IDENT = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in ("and", "or", "not", "in", "is", "contains", "matches")
)
VALUES = st.text(alphabet=string.ascii_letters + string.digits + " ._-:/\"'", max_size=8)
SELECTORS = st.lists(IDENT, min_size=1, max_size=3).map(tuple)
OPS = st.sampled_from(["==", "!=", "in", "not in", "is empty", "is not empty"])


@st.composite
def matches(draw):
    op = draw(OPS)
    value = None if op.startswith("is ") else draw(VALUES)
    return Match(draw(SELECTORS), op, value)


def _not(e):
    return e.operand if isinstance(e, Not) else Not(e)  # not not x parses as x


EXPRESSIONS = st.recursive(
    matches(),
    lambda inner: st.one_of(
        inner.map(_not),
        st.tuples(st.sampled_from(["and", "or"]), inner, inner).map(lambda t: Binary(*t)),
    ),
    max_leaves=8,
)


@given(EXPRESSIONS)
@settings(max_examples=300, deadline=None)
def test_printed_expressions_parse_back_to_the_same_tree(expression):
    """str() of any tree is an expression go-bexpr's grammar accepts, and parses back
    to that tree (operators, selectors, values with any printable characters)."""
    assert parse(str(expression)) == expression


@given(st.text(max_size=60))
@settings(max_examples=500, deadline=None)
def test_arbitrary_text_parses_or_raises_a_syntax_error(text):
    """Attacker-controlled filter text never raises anything but BexprSyntaxError."""
    with contextlib.suppress(BexprSyntaxError):
        parse(text)


META = st.dictionaries(st.sampled_from(["version", "zone", "x"]), VALUES, max_size=3)
TAGS = st.lists(st.sampled_from(["v1", "v2", "canary", "1", "true"]), max_size=4)


@given(META, TAGS, st.integers(0, 65535), st.sampled_from(["version", "zone", "x"]), VALUES)
@settings(max_examples=300, deadline=None)
def test_operators_against_an_oracle(meta, tags, port, key, value):
    """Each operator agrees with its plain-Python meaning on meta, tags and port, and
    each operator and its negation are complementary, missing keys included."""
    datum = instance(meta, tags, port)
    quoted = "`" + value + "`"
    present = key in meta

    def ev(text):
        return evaluate(parse(text), datum)

    assert ev(f"Service.Meta.{key} == {quoted}") is (present and meta[key] == value)
    assert ev(f"Service.Meta.{key} != {quoted}") is not (present and meta[key] == value)
    assert ev(f"{quoted} in Service.Tags") is (value in tags)
    assert ev(f"Service.Tags contains {quoted}") is (value in tags)
    assert ev(f"{quoted} not in Service.Tags") is (value not in tags)
    assert ev(f"{key} in Service.Meta") is present
    assert ev(f"Service.Meta.{key} is empty") is (not present or meta[key] == "")
    assert ev(f"Service.Meta.{key} is not empty") is (present and meta[key] != "")
    literal = "`" + re.escape(value).replace("`", "") + "`"
    if "`" not in value:
        assert ev(f"Service.Meta.{key} matches {literal}") is (present and value in meta[key])
    assert ev(f"Service.Port == {port}") is True
    assert ev(f'Service.Port == "{port + 1}"') is False


@given(EXPRESSIONS, META, TAGS)
@settings(max_examples=200, deadline=None)
def test_boolean_laws(expression, meta, tags):
    """not / and / or follow De Morgan and double negation on any datum (or all raise)."""
    datum = Struct(Service=Struct(Meta=meta, Tags=tags), **{k: meta for k in ("a", "b")})

    def outcome(e):
        try:
            return evaluate(e, datum)
        except BexprError:
            return "error"

    base = outcome(expression)
    negated = outcome(Not(expression))
    assert negated == ("error" if base == "error" else not base)
    if isinstance(expression, Binary):
        other = "or" if expression.operator == "and" else "and"
        dual = Not(Binary(other, Not(expression.left), Not(expression.right)))
        if outcome(expression.left) != "error" and outcome(expression.right) != "error":
            assert outcome(dual) == base
