"""Tests for gwcore.net.accesslog: one JSON object per line, to a file, stdout or nowhere,
and reopening for log rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
