"""Reading JSON objects the way Consul's config decoder does (sans-IO).

Consul decodes config entries with mapstructure, ``WeaklyTypedInput`` on, and accepts
snake_case aliases (``agent/structs/config_entry.go``, ``lib/decode``). So here:

- field names match case-insensitively and with or without underscores (``CAFile``,
  ``cafile`` and ``ca_file`` are one field); ``null`` is "absent";
- scalars are weakly typed as mapstructure does: a bool from ``"true"``/``"1"``/``"t"``
  (Go's ``strconv.ParseBool``) or a number (non-zero is true); an integer from a
  decimal, hex or octal string (``strconv.ParseInt(s, 0, 64)``), a whole float or a
  bool; a string from a number or bool (``true`` is ``"1"``); an empty string is the
  zero value of a bool or a number.

Every bad field becomes a :class:`ShapeProblem`, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

_EMPTY_META: Mapping[str, str] = MappingProxyType({})
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[oO]?[0-7_]*|0[bB][01_]+|[1-9][0-9_]*)")


def weak_bool(value: Any) -> bool | None:
    """mapstructure's weak bool: a bool, a number (non-zero is true), or a string Go's
    ``strconv.ParseBool`` reads (an empty string is false); None otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        if value in _GO_TRUE:
            return True
        if value in _GO_FALSE or value == "":
            return False
    return None


def weak_int(value: Any) -> int | None:
    """mapstructure's weak integer: an int, a whole float, a bool (1/0), or a string
    ``strconv.ParseInt(s, 0, 64)`` reads (an empty string is 0); None otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        if value == "":
            return 0
        if _GO_INT.fullmatch(value) and not value.strip("+-").startswith("_"):
            text = value.replace("_", "")
            sign = -1 if text.startswith("-") else 1
            digits = text.lstrip("+-")
            if len(digits) > 1 and digits[0] == "0" and digits[1] in "0123456789_":
                digits = "0o" + digits[1:]  # Go's leading-zero octal
            try:
                return sign * int(digits, 0)
            except ValueError:
                return None
    return None


def weak_string(value: Any) -> str | None:
    """mapstructure's weak string: a string, a bool (``"1"``/``"0"``) or a number."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    return None


@dataclass(frozen=True, slots=True)
class ShapeProblem:
    """One thing wrong with a document: which document, where in it, and what."""

    origin: str  # where the document came from, e.g. a file path
    where: str  # a JSON location such as ``Services[1].CertFile``, or ``(document)``
    message: str
    in_force: bool = False
    """The document is used as it is; the problem is a caveat (logged as a warning)."""

    def __str__(self) -> str:
        return f"{self.origin}: {self.where}: {self.message}"


_MISSING: Any = object()


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class _Sink:
    """Collects the problems of one origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.problems: list[ShapeProblem] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(ShapeProblem(self.origin, where or "(document)", message))


class _Object:
    """One JSON object being read; every bad field becomes a problem, never an exception."""

    def __init__(
        self,
        sink: _Sink,
        where: str,
        obj: Mapping[Any, Any],
        known: Iterable[str] | None = None,
        *,
        weak: bool = False,
    ) -> None:
        # weak: a config entry (mapstructure, weakly typed); otherwise a catalog body,
        # which Consul decodes with encoding/json (strict types).
        self.weak = weak
        self.sink = sink
        self.where = where
        self.obj = obj
        self._keys: dict[str, str] = {}
        for key in obj:
            if not isinstance(key, str):
                sink.problem(where, f"has a non-string key {key!r}")
                continue
            n = _norm(key)
            if n in self._keys:
                sink.problem(_at(where, key), f"names the same field as {self._keys[n]}")
                continue
            self._keys[n] = key
        self._known = None if known is None else {_norm(k) for k in known}

    def at(self, name: str) -> str:
        return _at(self.where, self._keys.get(_norm(name), name))

    def problem(self, name: str, message: str) -> None:
        self.sink.problem(self.at(name), message)

    def raw(self, name: str) -> Any:
        key = self._keys.get(_norm(name))
        if key is None:
            return _MISSING
        value = self.obj[key]
        return _MISSING if value is None else value

    def string(self, name: str, default: str = "", *, required: bool = False) -> str:
        value = self.raw(name)
        if value is _MISSING:
            if required:
                self.problem(name, "is required")
            return default
        text = weak_string(value) if self.weak else value if isinstance(value, str) else None
        if text is None:
            self.problem(name, f"must be a string, not {_json_type(value)}")
            return default
        if required and not text:
            self.problem(name, "must not be empty")
        return text

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is _MISSING:
            return default
        number = (
            weak_int(value)
            if self.weak
            else value
            if isinstance(value, int) and not isinstance(value, bool)
            else None
        )
        if number is None:
            self.problem(name, f"must be an integer, not {_json_type(value)}")
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            self.problem(name, f"must be between {minimum} and {maximum}, not {number}")
            return default
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.raw(name)
        if value is _MISSING:
            return default
        flag = weak_bool(value) if self.weak else value if isinstance(value, bool) else None
        if flag is None:
            self.problem(name, f"must be true or false, not {_json_type(value)}")
            return default
        return flag

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is _MISSING:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(name, "must be a list of strings")
            return ()
        return tuple(value)

    def string_map(self, name: str) -> Mapping[str, str]:
        value = self.raw(name)
        if value is _MISSING:
            return _EMPTY_META
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.problem(name, "must be an object of strings")
            return _EMPTY_META
        return MappingProxyType(dict(sorted(value.items())))

    def child(self, name: str, known: Iterable[str] | None = None) -> _Object | None:
        value = self.raw(name)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            self.problem(name, f"must be an object, not {_json_type(value)}")
            return None
        return _Object(self.sink, self.at(name), value, known, weak=self.weak)

    def children(self, name: str, known: Iterable[str] | None = None) -> list[_Object]:
        value = self.raw(name)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.problem(name, f"must be a list, not {_json_type(value)}")
            return []
        found = []
        for i, item in enumerate(value):
            where = f"{self.at(name)}[{i}]"
            if not isinstance(item, Mapping):
                self.sink.problem(where, f"must be an object, not {_json_type(item)}")
                continue
            found.append(_Object(self.sink, where, item, known, weak=self.weak))
        return found

    def finish(self) -> None:
        """Report fields a strict reader does not know."""
        if self._known is None:
            return
        for n, key in self._keys.items():
            if n not in self._known:
                self.sink.problem(_at(self.where, key), "unknown field")
