"""Reading one TOML table with clear errors: :class:`ConfigProblem` names the file and the
dotted key, :class:`SectionReader` reads typed values and reports unknown keys with a
suggestion. Every plugin reads its own section with it; :mod:`gwcore.policy.config`
reads ``[gateway]`` and ``[sites.NAME]`` with it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gwcore.policy.dns_records import valid_hostname
from gwcore.policy.resolv import (
    DEFAULT_EDNS_PAYLOAD,
    MAX_EDNS_PAYLOAD,
    MAX_NDOTS,
    MIN_EDNS_PAYLOAD,
)
from gwcore.policy.url_secrets import url_credentials

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file: where, which key, and what."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a Go-style duration ("500ms", "5s", "1m30s", "72h").

    Returns ``None`` when ``value`` is neither; negative values are rejected too.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 <= value < math.inf else None
    if not isinstance(value, str) or not value:
        return None
    pos, total = 0, 0.0
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for match in _DURATION_RE.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    return total if pos == len(value) else None


_MISSING = object()


class SectionReader:
    """Reads one TOML table, collecting a problem for each bad or unknown key.

    Used by the core for ``[gateway]`` and ``[sites.NAME]`` and by every plugin for
    its own section, so all messages look alike: ``file: dotted.key: message``.
    Call :meth:`finish` after reading every key the section may hold.
    """

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.table = table
        self.problems: list[ConfigProblem] = []
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def problem(self, name: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, self.key(name), message))

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name in self.table:
            return self.table[name]
        if required:
            self.problem(name, "is required")
        return _MISSING if required else default

    def raw(self, name: str, default: Any = None) -> Any:
        """The value as written (marked as read), for shapes the typed readers do not
        cover, such as a list of tables; check it yourself and :meth:`problem` it."""
        return self._get(name, default, False)

    def string(
        self,
        name: str,
        default: str | None = None,
        *,
        required: bool = False,
        choices: tuple[str, ...] | None = None,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str | None:
        value = self._get(name, default, required)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, str):
            self.problem(name, f"must be a string, not {_type_name(value)}")
            return default
        if choices is not None and value not in choices:
            self.problem(name, f"must be one of {', '.join(choices)}, not {value!r}")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(name, f"{value!r} is not {what or 'valid'}")
            return default
        return value

    def credential_free_url(self, name: str, *, query: bool = True) -> bool:
        """False, with a problem naming the key (never the value), when the string at
        ``name`` carries credentials (:mod:`gwcore.policy.url_secrets`); read it with
        :meth:`string` only when True, so a bad-URL message cannot echo them."""
        value = self.table.get(name)
        why = url_credentials(value, query=query) if isinstance(value, str) else None
        if why is not None:
            self._seen.add(name)
            self.problem(name, why)
        return why is None

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, default, False)
        if not isinstance(value, bool):
            self.problem(name, f"must be true or false, not {_type_name(value)}")
            return default
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self._get(name, default, False)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, f"must be an integer, not {_type_name(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            self.problem(
                name,
                f"must be between {minimum}{upper}, not {value}"
                if upper
                else f"must be at least {minimum}, not {value}",
            )
            return default
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A number (integer or float) within optional bounds."""
        value = self._get(name, default, False)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(name, f"must be a number, not {_type_name(value)}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.problem(
                name,
                f"must be between {minimum:g} and {maximum:g}, not {value:g}"
                if minimum is not None and maximum is not None
                else f"is out of range: {value:g}",
            )
            return default
        return float(value)

    def duration(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A duration in seconds; accepts a number or a string such as ``"5s"``."""
        value = self._get(name, default, False)
        seconds = parse_duration(value)
        if seconds is None:
            self.problem(
                name, f'must be a duration (seconds, or a string like "5s"), not {value!r}'
            )
            return default
        if seconds < minimum:
            self.problem(name, f"must be at least {minimum:g}s, not {seconds:g}s")
            return default
        return seconds

    def strings(
        self, name: str, default: tuple[str, ...] = (), *, required: bool = False
    ) -> tuple[str, ...]:
        """A list of strings; a single string is accepted as a one-item list."""
        value = self._get(name, default, required)
        if value is _MISSING or value is default:
            return default
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(name, "must be a list of strings")
            return default
        return tuple(value)

    def table_value(self, name: str) -> Mapping[str, Any]:
        value = self._get(name, {}, False)
        if not isinstance(value, Mapping):
            self.problem(name, f"must be a table, not {_type_name(value)}")
            return {}
        return value

    def finish(self, allow_tables: bool = False) -> list[ConfigProblem]:
        """Report unknown keys (tables too unless ``allow_tables``) and return all problems."""
        for name, value in self.table.items():
            if name in self._seen:
                continue
            if allow_tables and isinstance(value, Mapping):
                continue
            self.problem(name, "unknown key" + did_you_mean(name, self._seen))
        return self.problems


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when a known name is close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_stub_options(
    reader: SectionReader, prefix: str
) -> tuple[int, tuple[str, ...] | None, int | None]:
    """``<prefix>edns_payload``, ``<prefix>search``, ``<prefix>ndots`` of a section (a
    site's ``dns_`` keys or ``dns_catalog``'s): (payload, search or None, ndots or None;
    ``None`` means resolv.conf's)."""
    key = f"{prefix}edns_payload"
    payload = reader.integer(key, DEFAULT_EDNS_PAYLOAD, minimum=0, maximum=MAX_EDNS_PAYLOAD)
    if 0 < payload < MIN_EDNS_PAYLOAD:
        reader.problem(key, f"must be 0 (no EDNS0) or at least {MIN_EDNS_PAYLOAD}, not {payload}")
        payload = DEFAULT_EDNS_PAYLOAD
    search: tuple[str, ...] | None = None
    if f"{prefix}search" in reader.table:
        names = []
        for name in reader.strings(f"{prefix}search"):
            if valid_hostname(name):
                names.append(name.rstrip(".").lower())
            else:
                reader.problem(f"{prefix}search", f"{name!r} is not a DNS name")
        search = tuple(names)
    ndots = None
    if f"{prefix}ndots" in reader.table:
        ndots = reader.integer(f"{prefix}ndots", 1, minimum=0, maximum=MAX_NDOTS)
    return payload, search, ndots


def _type_name(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
