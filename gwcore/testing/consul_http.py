"""The HTTP plumbing of the Consul double: ``wait`` durations, request records, blocked
queries, injected faults, and small helpers tests use with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web import server

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wait(text: str) -> float:
    """A Go duration as Consul parses ``?wait=`` (a bare number means seconds)."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _SCALE[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


@dataclass
class _Waiter:
    request: server.Request
    index: int
    current: Callable[[], int]
    answer: Callable[[], None]
    timer: Any = None


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int | None  # None: until cleared


@dataclass
class RequestRecord:
    method: str
    path: str
    args: dict[str, list[str]]
    token: str | None


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _scope(args: dict[str, list[str]]) -> tuple[str, str]:
    """The ``ns`` and ``partition`` a request names (Consul's defaults otherwise)."""
    return (args.get("ns") or ["default"])[0], (args.get("partition") or ["default"])[0]


@dataclass
class Recorder:
    """Collects calls (for a test's callbacks)."""

    items: list[Any] = field(default_factory=list)

    def __call__(self, item: Any) -> None:
        self.items.append(item)


def wait_deferred(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def find(records: Iterable[RequestRecord], prefix: str) -> list[RequestRecord]:
    return [r for r in records if r.path.startswith(prefix)]
