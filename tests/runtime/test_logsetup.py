"""The application log observer (gwcore.runtime.logsetup): level, JSON lines, no Twisted chatter.

Events are captured from the real global log publisher while real Twisted objects
(a factory, a listening TCP port) do what they log, then fed to the observer.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, globalLogPublisher, textFileLogObserver
from twisted.python import log as legacy_log

from gwcore.runtime.logsetup import gateway_observer, is_chatter, json_line


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


async def _chatter_events() -> list[dict[str, Any]]:
    """What Twisted logs for one client factory and one listening port's life."""
    with captured() as events:
        factory = Factory.forProtocol(Protocol)
        factory.doStart()
        factory.doStop()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        await port.stopListening()
    return events


def _ours() -> list[dict[str, Any]]:
    with captured() as events:
        Logger(namespace="tgw").info("site {site} listening", site="main")
        Logger(namespace="tgw").debug("a debug detail")
        Logger(namespace="tgw").error("reload rejected: {why}", why="bad")
        legacy_log.msg("a legacy line that is not chatter")
    return events


@pytest_twisted.ensureDeferred
async def test_factory_and_port_chatter_is_recognised_and_nothing_else() -> None:
    """Starting/Stopping factory, '... starting on N' and '(TCP Port N Closed)' are chatter;
    tgw's own lines and other legacy lines are not."""
    chatter = await _chatter_events()
    texts = [json.loads(json_line(e))["message"] for e in chatter]
    assert any(t.startswith("Starting factory") for t in texts), texts
    assert any(" starting on " in t for t in texts), texts
    assert any(t.endswith("Closed)") for t in texts), texts
    assert all(is_chatter(e) for e in chatter), texts
    assert not any(is_chatter(e) for e in _ours())


@pytest_twisted.ensureDeferred
async def test_text_observer_at_info_drops_chatter_and_debug_but_keeps_the_rest() -> None:
    """At ``info`` the text log holds tgw's info and error lines and the legacy line only;
    at ``debug`` the chatter comes back."""
    events = [*(await _chatter_events()), *_ours()]
    for level, wanted_chatter in (("info", False), ("debug", True)):
        out = io.StringIO()
        observer = gateway_observer(
            lambda out=out: textFileLogObserver(out), io.StringIO, level, "text"
        )
        for event in events:
            observer(dict(event))
        text = out.getvalue()
        assert "site main listening" in text
        assert "reload rejected: bad" in text
        assert "a legacy line that is not chatter" in text
        assert ("Starting factory" in text) is wanted_chatter
        assert ("a debug detail" in text) is wanted_chatter
        assert (" starting on " in text) is wanted_chatter


def test_error_level_keeps_only_errors() -> None:
    """``log_level = "error"`` drops info lines."""
    out = io.StringIO()
    observer = gateway_observer(lambda: textFileLogObserver(out), io.StringIO, "error", "text")
    for event in _ours():
        observer(dict(event))
    assert "reload rejected: bad" in out.getvalue()
    assert "site main listening" not in out.getvalue()


def test_json_format_writes_one_object_per_line() -> None:
    """``log_format = "json"``: every line is one JSON object with time, level, namespace
    and the formatted message; a failure carries its traceback."""
    stream = io.StringIO()
    observer = gateway_observer(
        lambda: textFileLogObserver(io.StringIO()), lambda: stream, "info", "json"
    )
    with captured() as events:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            Logger(namespace="tgw").failure("reload failed")
    for event in [*_ours(), *events]:
        observer(dict(event))
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["namespace"], r["message"]) for r in records] == [
        ("info", "tgw", "site main listening"),
        ("error", "tgw", "reload rejected: bad"),
        ("info", "log_legacy", "a legacy line that is not chatter"),
        ("critical", "tgw", "reload failed"),
    ]
    assert "ZeroDivisionError" in records[-1]["traceback"]
    assert all(r["time"].endswith("+00:00") for r in records)
    # The same process fields as the access log: which host, process and worker wrote it.
    assert all(
        (r["host"], r["pid"], r["worker"]) == (socket.gethostname(), os.getpid(), None)
        for r in records
    )
