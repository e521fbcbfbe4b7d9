"""Tests for gwcore.net.accesslog: one JSON object per line, to a file, stdout or nowhere,
and reopening for log rotation."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from gwcore.net.accesslog import AccessLog


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_file_target_appends_one_json_line_per_record(tmp_path: Path) -> None:
    """Relative to the config directory, parent directories created, existing lines kept."""
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    path.write_text('{"old":true}\n')
    log = AccessLog("logs/access.log", tmp_path)
    log.write({"site": "main", "bytes_up": 3})
    log({"site": "main", "path": Path("/x"), "note": "ünïcode"})  # callable as a writer
    log.close()
    assert lines(path) == [
        {"old": True},
        {"site": "main", "bytes_up": 3},
        {"site": "main", "path": "/x", "note": "ünïcode"},
    ]


def test_records_are_on_disk_before_close(tmp_path: Path) -> None:
    """Line buffered: a crash must not lose the records already written."""
    log = AccessLog("nested/dir/access.log", tmp_path)
    log.write({"n": 1})
    assert lines(tmp_path / "nested" / "dir" / "access.log") == [{"n": 1}]
    log.close()


def test_empty_target_writes_nothing(tmp_path: Path) -> None:
    log = AccessLog("", tmp_path)
    log.write({"n": 1})
    log.reopen()
    log.write({"n": 2})
    log.close()
    assert list(tmp_path.iterdir()) == []


def test_dash_target_writes_to_standard_output(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = AccessLog("-", tmp_path)
    log.write({"n": 1})
    log.close()
    assert capfd.readouterr().out == '{"n":1}\n'
    assert list(tmp_path.iterdir()) == []


def test_reopen_after_rotation_writes_to_a_fresh_file(tmp_path: Path) -> None:
    """logrotate moves the file away, then signals; until then the old file keeps filling."""
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log = AccessLog("access.log", tmp_path)
    log.write({"n": 1})
    path.rename(rotated)
    log.write({"n": 2})
    assert not path.exists()
    log.reopen()
    log.write({"n": 3})
    log.close()
    assert lines(rotated) == [{"n": 1}, {"n": 2}]
    assert lines(path) == [{"n": 3}]


def test_a_full_disk_drops_and_counts_records_with_one_log_line(logged) -> None:
    """Writing to /dev/full (ENOSPC on every write): no exception reaches the caller,
    each record is counted as dropped, and one error line is logged for the streak."""
    counted = []
    log = AccessLog("/dev/full", Path("/"), dropped=lambda: counted.append(1))
    for n in range(500):
        log.write({"n": n, "pad": "x" * 300})
    log.close()
    assert log.dropped == 500 and len(counted) == 500
    errors = [e for e in logged if e.get("log_namespace") == "tgw.accesslog"]
    assert len(errors) == 1
    assert "No space left on device" in errors[0]["error"]


def test_after_a_failed_write_the_log_recovers_with_whole_lines(tmp_path: Path, logged) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past 1000 bytes (EFBIG, as a full
    disk would): records are dropped meanwhile; once the limit is lifted, records are
    written again, each on its own line, the half-written one ended by a newline."""
    path = tmp_path / "access.log"
    log = AccessLog("access.log", tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
        for n in range(20):
            log.write({"n": n, "pad": "x" * 90})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert 0 < log.dropped < 20
    log.write({"n": "after"})
    log.close()
    raw = path.read_text().splitlines()
    whole = [json.loads(line) for line in raw if line.endswith("}")]
    assert len(whole) - 1 == 20 - log.dropped  # every record not dropped is whole
    assert whole[-1] == {"n": "after"}
    assert [r["n"] for r in whole[:-1]] == list(range(len(whole) - 1))
    torn = [line for line in raw if not line.endswith("}")]
    assert len(torn) <= 1  # at most the one line cut by the limit, ended by a newline
    messages = [e["log_format"] for e in logged if e.get("log_namespace") == "tgw.accesslog"]
    assert len(messages) == 2 and "writing again" in messages[1]


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
