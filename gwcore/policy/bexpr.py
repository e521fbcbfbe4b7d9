"""Consul's filter language (hashicorp/go-bexpr): a sans-IO parser and evaluator.

Consul evaluates ``?filter=`` and service-resolver subset ``Filter`` expressions with
go-bexpr over its Go structs. This module parses the same grammar (go-bexpr's
``grammar/grammar.peg``, followed rule by rule as a backtracking PEG, so an
expression parses here exactly when it parses there) and evaluates it over plain
Python values standing in for those structs:

- a :class:`Struct` is a Go struct: selecting a field it lacks is an *error*;
- any other mapping is a Go map: a missing key is "not present", which each operator
  answers as go-bexpr's ``NotPresentDisposition`` does (``==`` false, ``!=`` true,
  ``in`` false, ``not in`` true, ``is empty`` true, ``matches`` false ...);
- lists are slices (``.0`` / ``/0`` index them), ``str``/``int``/``float``/``bool``
  are the primitive kinds.

Semantics, as go-bexpr's ``evaluate.go``:

- ``==``/``!=`` compare with the value coerced to the selected field's kind (Go's
  ``strconv.ParseBool``/``ParseInt(s, 0, 64)``/``ParseFloat``); a value that does not
  coerce is an evaluation error. Strings compare exactly (case-sensitive).
- ``"v" in Sel`` / ``Sel contains "v"``: a map has the key, a slice has an equal element
  (elements that do not coerce are skipped), a string contains the substring.
- ``matches``: an RE2 search (Go's ``regexp.Match``, unanchored) on a string field,
  compiled with google-re2 when the expression is parsed.
- ``is empty``: a map, slice or string of length 0.
- ``and``/``or`` short-circuit; ``not`` negates (an error stays an error).
- Selectors are case-sensitive: ``Service.Meta.version``, ``Service.Meta["a.b"]``,
  ``Service.Tags``, ``Node.Meta.rack``, ``Service.Port``; a double-quoted JSON pointer
  (``"/Service/Meta/version"``) selects too. As a value, an unquoted word is its own
  text (``== v1``), as in go-bexpr.

Not supported (a :class:`BexprSyntaxError`, so the filter is refused, never
mis-evaluated): go-bexpr 0.1.16's ``is nil``/``is not nil`` and the ``any``/``all``
collection expressions.

Bounds: an expression longer than :data:`MAX_LENGTH` characters or nested deeper than
:data:`MAX_DEPTH` is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is reported by the caller, not on stderr

MAX_LENGTH = 4096
MAX_DEPTH = 64


class BexprError(Exception):
    """An expression that does not parse, or a datum it cannot be evaluated on."""


class BexprSyntaxError(BexprError):
    """The expression does not parse (the message says where and why)."""


class BexprEvalError(BexprError):
    """The expression cannot be evaluated on this datum (go-bexpr returns an error)."""


class Struct(dict[str, Any]):
    """A Go struct: selecting a missing field is an error, not "not present"."""


# --- the syntax tree -----------------------------------------------------------------

EQUAL, NOT_EQUAL, IN, NOT_IN = "==", "!=", "in", "not in"
IS_EMPTY, IS_NOT_EMPTY, MATCHES, NOT_MATCHES = "is empty", "is not empty", "matches", "not matches"

#: Go's NotPresentDisposition: the answer for a selector naming a missing map key.
_NOT_PRESENT = {
    EQUAL: False,
    NOT_EQUAL: True,
    IN: False,
    NOT_IN: True,
    IS_EMPTY: True,
    IS_NOT_EMPTY: False,
    MATCHES: False,
    NOT_MATCHES: True,
}


@dataclass(frozen=True, slots=True)
class Match:
    selector: tuple[str, ...]
    operator: str
    value: str | None = None  # the raw value text; None for is (not) empty
    regex: Any = field(default=None, compare=False)  # compiled for (not) matches

    def __str__(self) -> str:
        sel = ".".join(self.selector)
        if self.value is None:
            return f"{sel} {self.operator}"
        if self.operator in (IN, NOT_IN):
            return f"{_quote(self.value)} {self.operator} {sel}"
        return f"{sel} {self.operator} {_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expression

    def __str__(self) -> str:
        return f"not ({self.operand})"


@dataclass(frozen=True, slots=True)
class Binary:
    operator: str  # "and" | "or"
    left: Expression
    right: Expression

    def __str__(self) -> str:
        return f"({self.left}) {self.operator} ({self.right})"


Expression = Match | Not | Binary


def _quote(value: str) -> str:
    return "`" + value + "`" if "`" not in value else '"' + value + '"'


# --- the parser: go-bexpr's PEG, rule by rule --------------------------------------

_WS = re.compile(r"[ \t\r\n]+")
_IDENT = re.compile(r"[a-zA-Z][a-zA-Z0-9_/]*")
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_POINTER_SEGMENT = re.compile(r"/[\w\-.~:|]+")  # go-bexpr: [\pL\pN-_.~:|]; \w is \pL\pN_


@dataclass
class _Parser:
    text: str
    depth: int = 0

    def fail(self, pos: int, message: str) -> BexprSyntaxError:
        return BexprSyntaxError(f"{message} at offset {pos}")

    # _ and _?
    def ws(self, pos: int) -> int | None:
        m = _WS.match(self.text, pos)
        return m.end() if m else None

    def opt_ws(self, pos: int) -> int:
        m = _WS.match(self.text, pos)
        return m.end() if m else pos

    def lit(self, pos: int, word: str) -> int | None:
        return pos + len(word) if self.text.startswith(word, pos) else None

    def seq(self, pos: int | None, *parts: str) -> int | None:
        """Match ``parts`` in order; ``"_"`` is required whitespace, ``"_?"`` optional."""
        for part in parts:
            if pos is None:
                return None
            if part == "_":
                pos = self.ws(pos)
            elif part == "_?":
                pos = self.opt_ws(pos)
            else:
                pos = self.lit(pos, part)
        return pos

    # Input <- _? "(" _? OrExpression _? ")" _? EOF / _? OrExpression _? EOF
    def input(self) -> Expression:
        start = self.opt_ws(0)
        if self.text.startswith("(", start):
            # (pigeon keeps an error raised in any alternative: the parse fails)
            got = self.or_expr(self.opt_ws(start + 1))
            if got is not None:
                expr, pos = got
                end = self.seq(pos, "_?", ")", "_?")
                if end == len(self.text):
                    return expr
        got = self.or_expr(start)
        if got is None:
            raise self.fail(start, "not an expression")
        expr, pos = got
        if self.opt_ws(pos) != len(self.text):
            raise self.fail(self.opt_ws(pos), "unexpected text")
        return expr

    # OrExpression <- And _ "or" _ Or / And   (iterative: same tree shape, no deep recursion)
    def or_expr(self, pos: int) -> tuple[Expression, int] | None:
        return self._chain(pos, "or", self.and_expr)

    # AndExpression <- Not _ "and" _ And / Not
    def and_expr(self, pos: int) -> tuple[Expression, int] | None:
        return self._chain(pos, "and", self.not_expr)

    def _chain(self, pos: int, word: str, operand: Any) -> tuple[Expression, int] | None:
        first = operand(pos)
        if first is None:
            return None
        items, pos = [first[0]], first[1]
        while True:
            after = self.seq(pos, "_", word, "_")
            nxt = operand(after) if after is not None else None
            if nxt is None:
                break
            items.append(nxt[0])
            pos = nxt[1]
        expr = items[-1]
        for left in reversed(items[:-1]):
            expr = Binary(word, left, expr)
        return expr, pos

    # NotExpression <- "not" _ NotExpression / ParenthesizedExpression
    def not_expr(self, pos: int) -> tuple[Expression, int] | None:
        after = self.seq(pos, "not", "_")
        if after is not None:
            self._enter(pos)
            try:
                inner = self.not_expr(after)
            finally:
                self.depth -= 1
            if inner is not None:
                operand, end = inner
                # "not not x" is x, as go-bexpr folds it
                return (operand.operand if isinstance(operand, Not) else Not(operand)), end
        return self.paren_expr(pos)

    def _enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(pos, f"nested deeper than {MAX_DEPTH}")

    # ParenthesizedExpression <- "(" _? Or _? ")" / MatchExpression / "(" _? Or _? !")" (error)
    def paren_expr(self, pos: int) -> tuple[Expression, int] | None:
        if self.text.startswith("(", pos):
            self._enter(pos)
            try:
                inner = self.or_expr(self.opt_ws(pos + 1))
            finally:
                self.depth -= 1
            if inner is not None:
                end = self.seq(inner[1], "_?", ")")
                if end is not None:
                    return inner[0], end
        got = self.match_expr(pos)
        if got is not None:
            return got
        if self.text.startswith("(", pos) and inner is not None:
            raise self.fail(pos, "Unmatched parentheses")
        return None

    # MatchExpression <- SelectorOpValue / SelectorOp / ValueOpSelector
    def match_expr(self, pos: int) -> tuple[Expression, int] | None:
        sel = self.selector(pos)
        if sel is not None:
            path, after = sel
            for ops, op in (
                (("_?", "=="), EQUAL),
                (("_?", "!="), NOT_EQUAL),
                (("_", "contains", "_"), IN),
                (("_", "not", "_", "contains", "_"), NOT_IN),
                (("_", "matches", "_"), MATCHES),
                (("_", "not", "_", "matches", "_"), NOT_MATCHES),
            ):
                at = self.seq(after, *ops)
                if at is None:
                    continue
                if op in (EQUAL, NOT_EQUAL):
                    at = self.opt_ws(at)
                value = self.value(at)
                if value is None:
                    continue
                return self._match(path, op, value[0], pos), value[1]
            for ops, op in (
                (("_", "is", "_", "empty"), IS_EMPTY),
                (("_", "is", "_", "not", "_", "empty"), IS_NOT_EMPTY),
            ):
                at = self.seq(after, *ops)
                if at is not None:
                    return Match(path, op), at
            if self.seq(after, "_", "is", "_", "nil") or self.seq(
                after, "_", "is", "_", "not", "_", "nil"
            ):
                raise self.fail(after, "'is nil' / 'is not nil' are not supported")
        value = self.value(pos)
        if value is not None:
            raw, after = value
            for ops, op in ((("_", "in", "_"), IN), (("_", "not", "_", "in", "_"), NOT_IN)):
                at = self.seq(after, *ops)
                if at is None:
                    continue
                sel = self.selector(at)
                if sel is None:
                    raise self.fail(at, "Invalid selector")
                return Match(sel[0], op, raw), sel[1]
        return None

    def _match(self, path: tuple[str, ...], op: str, raw: str, pos: int) -> Match:
        if op not in (MATCHES, NOT_MATCHES):
            return Match(path, op, raw)
        try:
            return Match(path, op, raw, re2.compile(raw, _RE2_OPTIONS))
        except re2.error as e:
            detail = e.args[0] if e.args else e
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            raise self.fail(pos, f"failed to compile regular expression {raw!r}: {detail}") from e

    # Selector <- Identifier SelectorOrIndex* / '"' JsonPointerSegment* '"'
    def selector(self, pos: int) -> tuple[tuple[str, ...], int] | None:
        m = _IDENT.match(self.text, pos)
        if m is not None:
            path, pos = [m.group()], m.end()
            while True:
                if self.text.startswith(".", pos):
                    ident = _IDENT.match(self.text, pos + 1)
                    if ident is not None:
                        path.append(ident.group())
                        pos = ident.end()
                        continue
                if self.text.startswith("[", pos):
                    path_item, pos = self.index(pos)
                    path.append(path_item)
                    continue
                if self.text.startswith(".", pos):
                    digits = _DIGITS.match(self.text, pos + 1)
                    if digits is not None:
                        path.append(digits.group())
                        pos = digits.end()
                        continue
                break
            return tuple(path), pos
        if self.text.startswith('"', pos):
            at, segments = pos + 1, []
            while (seg := _POINTER_SEGMENT.match(self.text, at)) is not None:
                segments.append(seg.group()[1:].replace("~1", "/").replace("~0", "~"))
                at = seg.end()
            if self.text.startswith('"', at):
                return tuple(segments), at + 1
        return None

    # IndexExpression <- "[" _? StringLiteral _? "]" (errors: Invalid index / Unclosed index)
    def index(self, pos: int) -> tuple[str, int]:
        at = self.opt_ws(pos + 1)
        lit = self.string(at)
        if lit is None:
            raise self.fail(at, "Invalid index")
        end = self.seq(lit[1], "_?", "]")
        if end is None:
            raise self.fail(lit[1], "Unclosed index expression")
        return lit[0], end

    # Value <- Selector (its text) / NumberLiteral / StringLiteral
    def value(self, pos: int) -> tuple[str, int] | None:
        sel = self.selector(pos)
        if sel is not None:
            path, end = sel
            joined = "/".join(path) if self.text.startswith('"', pos) else ".".join(path)
            return joined, end
        m = _NUMBER.match(self.text, pos)
        if m is not None:
            end = m.end()
            if end == len(self.text) or self.text[end] in " \t\r\n)":
                return m.group(), end
            raise self.fail(pos, "Invalid number literal")
        return self.string(pos)

    # StringLiteral <- '`' RawStringChar* '`' / '"' DoubleStringChar* '"' (strconv.Unquote)
    def string(self, pos: int) -> tuple[str, int] | None:
        if pos >= len(self.text) or self.text[pos] not in '`"':
            return None
        quote = self.text[pos]
        end = self.text.find(quote, pos + 1)
        if end < 0:
            raise self.fail(pos, "Unterminated string literal")
        body = self.text[pos + 1 : end]
        if quote == "`":
            return body.replace("\r", ""), end + 1
        return _go_unquote(body, pos, self), end + 1


_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


def _go_unquote(body: str, pos: int, parser: _Parser) -> str:
    """The inside of a Go double-quoted string literal (``strconv.Unquote``)."""
    if "\n" in body:
        raise parser.fail(pos, "invalid syntax: newline in string literal")
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(nxt)
        if width is not None:
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise parser.fail(pos, "invalid syntax: bad escape")
            code = int(digits, 16)
            if nxt != "x" and (code > 0x10FFFF or 0xD800 <= code <= 0xDFFF):
                raise parser.fail(pos, "invalid syntax: bad code point")
            out.append(chr(code))
            i += 2 + width
            continue
        octal = body[i + 1 : i + 4]
        if len(octal) == 3 and all(c in "01234567" for c in octal) and int(octal, 8) <= 255:
            out.append(chr(int(octal, 8)))
            i += 4
            continue
        raise parser.fail(pos, "invalid syntax: bad escape")
    return "".join(out)


def parse(expression: str) -> Expression:
    """Parse a filter; :class:`BexprSyntaxError` if go-bexpr would not accept it."""
    if len(expression) > MAX_LENGTH:
        raise BexprSyntaxError(f"longer than {MAX_LENGTH} characters")
    try:
        return _Parser(expression).input()
    except RecursionError as e:  # bounded by MAX_DEPTH; belt and braces
        raise BexprSyntaxError("nested too deeply") from e


# --- evaluation --------------------------------------------------------------------

_MISSING_KEY: Any = object()

_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9](?:_?[0-9])*)?\.?[0-9]*(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.I
)
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


class _CoerceError(ValueError):
    """A value that does not coerce (Go's strconv.ErrSyntax / ErrRange)."""


def _coerce(raw: str, like: Any) -> Any:
    """The expression's value converted to the kind of ``like`` (getMatchExprValue)."""
    if isinstance(like, bool):
        if raw not in _BOOLS:
            raise _CoerceError(f"{raw!r} is not a bool")
        return _BOOLS[raw]
    if isinstance(like, int):
        if not _INT.fullmatch(raw):
            raise _CoerceError(f"{raw!r} is not an integer")
        sign, digits = (-1, raw[1:]) if raw[:1] == "-" else (1, raw.lstrip("+"))
        if len(digits) > 1 and digits[0] == "0" and digits[1] in "01234567_":
            value = int(digits[1:].lstrip("_") or "0", 8)
        else:
            value = int(digits, 0)
        value *= sign
        if not -(2**63) <= value < 2**63:
            raise _CoerceError(f"{raw!r} is out of range")
        return value
    if isinstance(like, float):
        if not raw or not _FLOAT.fullmatch(raw) or raw in ("+", "-", ".", "+.", "-."):
            raise _CoerceError(f"{raw!r} is not a number")
        try:
            value = float(raw.replace("_", ""))
        except ValueError as e:
            raise _CoerceError(f"{raw!r} is not a number") from e
        if math.isinf(value) and "inf" not in raw.lower():
            raise _CoerceError(f"{raw!r} is out of range")
        return value
    return raw


def _primitive(value: Any) -> bool:
    return isinstance(value, (str, int, float))  # bool is an int


def _select(datum: Any, path: Sequence[str]) -> Any:
    """The selected value, or ``_MISSING_KEY`` when a map lacks the last key."""
    current = datum
    for i, part in enumerate(path):
        if isinstance(current, Struct):
            if part not in current:
                raise BexprEvalError(f"no field {'.'.join(path[: i + 1])!r}")
            current = current[part]
        elif isinstance(current, Mapping):
            if part not in current:
                if i == len(path) - 1:
                    return _MISSING_KEY
                raise BexprEvalError(f"{'.'.join(path[: i + 1])!r} not found")
            current = current[part]
        elif isinstance(current, (list, tuple)):
            if not part.isdigit() or int(part) >= len(current):
                raise BexprEvalError(f"{'.'.join(path[: i + 1])!r}: no such index")
            current = current[int(part)]
        else:
            raise BexprEvalError(f"{'.'.join(path[:i])!r} has no member {part!r}")
    return current


def _equal(match: Match, value: Any) -> bool:
    if not _primitive(value) or value is None:
        raise BexprEvalError(f"cannot compare {'.'.join(match.selector)!r} with ==")
    try:
        return _coerce(match.value or "", value) == value
    except _CoerceError as e:
        raise BexprEvalError(f"error getting match value: {e}") from e


def _contains(match: Match, value: Any) -> bool:
    raw = match.value or ""
    if isinstance(value, Mapping):
        return raw in value
    if isinstance(value, (list, tuple)):
        for item in value:
            if not _primitive(item):
                raise BexprEvalError(f"cannot look for {raw!r} among non-primitive items")
            try:
                if _coerce(raw, item) == item:
                    return True
            except _CoerceError:
                continue
        return False
    if isinstance(value, str):
        return raw in value
    raise BexprEvalError(f"cannot perform in/contains on {'.'.join(match.selector)!r}")


def _is_empty(match: Match, value: Any) -> bool:
    if isinstance(value, (Mapping, list, tuple, str)):
        return len(value) == 0
    raise BexprEvalError(f"cannot perform is-empty on {'.'.join(match.selector)!r}")


def _matches(match: Match, value: Any) -> bool:
    if not isinstance(value, str):
        raise BexprEvalError(f"{'.'.join(match.selector)!r} is not a string")
    return match.regex.search(value) is not None


def _evaluate_match(match: Match, datum: Any) -> bool:
    value = _select(datum, match.selector)
    if value is _MISSING_KEY:
        return _NOT_PRESENT[match.operator]
    op = match.operator
    if op in (EQUAL, NOT_EQUAL):
        return _equal(match, value) == (op == EQUAL)
    if op in (IN, NOT_IN):
        return _contains(match, value) == (op == IN)
    if op in (IS_EMPTY, IS_NOT_EMPTY):
        return _is_empty(match, value) == (op == IS_EMPTY)
    return _matches(match, value) == (op == MATCHES)


def evaluate(expression: Expression, datum: Any) -> bool:
    """Evaluate a parsed filter on one datum; :class:`BexprEvalError` as go-bexpr errors."""
    if isinstance(expression, Match):
        return _evaluate_match(expression, datum)
    if isinstance(expression, Not):
        return not evaluate(expression.operand, datum)
    if expression.operator == "and":
        return evaluate(expression.left, datum) and evaluate(expression.right, datum)
    return evaluate(expression.left, datum) or evaluate(expression.right, datum)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter and its source text; ``Filter.compile("")`` matches everything."""

    text: str
    expression: Expression | None

    @classmethod
    def compile(cls, text: str) -> Filter:
        return cls(text, parse(text) if text else None)

    def __call__(self, datum: Any) -> bool:
        return True if self.expression is None else evaluate(self.expression, datum)
