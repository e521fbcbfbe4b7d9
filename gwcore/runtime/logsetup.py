"""The application log: level, format, and Twisted's per-factory and per-port chatter.

``twistd tgw`` and ``tgw run`` log through :func:`gateway_observer`, which wraps the
observer twistd would have used (``--logfile``, standard output with ``-n``, syslog):

- events below the level (``[gateway] log_level``, or ``--log-level``) are dropped;
- Twisted's chatter — ``Starting factory``/``Stopping factory`` for every outgoing HTTP
  client connection, ``... starting on PORT`` and ``(... Port N Closed)`` for every
  listener and every DNS query's UDP port — is only shown at level ``debug``;
- ``log_format = "json"`` writes one JSON object per line instead of text
  (``time``, ``level``, ``namespace``, ``message``, and ``traceback`` for failures).
  This is the application log; the access log is a separate stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
)

from gwcore.net.access_fields import process_fields

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

_FACTORY_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})
_PORT_CHATTER = re.compile(r"^(?:\S.* starting on \S+|\((?:\w+ )?Port \S+ Closed\))$")


def is_chatter(event: dict[str, Any]) -> bool:
    """Twisted's per-factory and per-port lines (not errors, not tgw's own lines)."""
    if event.get("log_format") in _FACTORY_FORMATS:
        return True
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return False
    return bool(_PORT_CHATTER.match(formatEvent(event)))


def json_line(event: dict[str, Any]) -> str:
    """One application-log event as one line of JSON."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
        **process_fields(),  # host, pid, worker: as in the access log
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, sort_keys=True) + "\n"


def gateway_observer(
    text_observer: Callable[[], ILogObserver],
    stream: Callable[[], IO[str]],
    level: str,
    log_format: str,
) -> ILogObserver:
    """The filtered observer: ``text_observer()`` for text, one JSON line per event to
    ``stream()`` for ``json`` (each factory is called once, here)."""
    threshold = LEVELS[level]
    if log_format == "json":
        target: ILogObserver = FileLogObserver(stream(), json_line)
    else:
        target = text_observer()
    quiet = threshold > LogLevel.debug

    def no_chatter(event: dict[str, Any]) -> PredicateResult:
        return PredicateResult.no if quiet and is_chatter(event) else PredicateResult.maybe

    return FilteringLogObserver(
        target, [LogLevelFilterPredicate(defaultLogLevel=threshold), no_chatter]
    )
