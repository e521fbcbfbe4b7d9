"""Tests for gwcore.net.filewatch: every way a file can change on disk is noticed exactly
once per poll, driven by a fake clock."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from gwcore.net import filewatch
from gwcore.net.filewatch import FileWatcher

INTERVAL = 1.0


class Recorder:
    """The watcher's callback: counts calls and can be told to raise."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def __call__(self) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("callback bug")


def watch(paths: list[Path], pattern: str = "*") -> tuple[Clock, FileWatcher, Recorder]:
    clock, recorder = Clock(), Recorder()
    watcher = FileWatcher(clock, paths, recorder, interval=INTERVAL, pattern=pattern)
    watcher.start()
    return clock, watcher, recorder


def rewrite_in_place(path: Path) -> None:
    """Same inode, same size, different bytes (and quite possibly the same mtime)."""
    with open(path, "r+b") as f:
        f.write(b"B" * len(path.read_bytes()))


def atomic_rename(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"renamed over")
    os.replace(tmp, path)


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "change",
    [rewrite_in_place, atomic_rename, delete],
    ids=["in-place-same-size", "atomic-rename", "deletion"],
)
@pytest.mark.parametrize("watched", ["file", "directory"])
def test_each_change_fires_exactly_one_callback(
    tmp_path: Path, change: Callable[[Path], None], watched: str
) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"A" * 64)
    clock, _, recorder = watch([path if watched == "file" else tmp_path])
    change(path)
    assert recorder.calls == 0, "nothing happens between polls"
    clock.advance(INTERVAL)
    assert recorder.calls == 1
    clock.advance(INTERVAL * 5)
    assert recorder.calls == 1, "a change is reported once, not on every poll"


def test_kubernetes_style_symlink_swap_fires_one_callback(tmp_path: Path) -> None:
    """A projected volume: cert.pem -> ..data/cert.pem, ..data -> ..<timestamp>; an
    update writes a new timestamp directory and renames a new ``..data`` over the old."""
    first = tmp_path / "..2024_01_01"
    first.mkdir()
    (first / "cert.pem").write_bytes(b"first")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "cert.pem").symlink_to("..data/cert.pem")
    clock, _, recorder = watch([tmp_path / "cert.pem"])
    clock.advance(INTERVAL)
    assert recorder.calls == 0

    second = tmp_path / "..2024_01_02"
    second.mkdir()
    (second / "cert.pem").write_bytes(b"second")
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.advance(INTERVAL)
    assert recorder.calls == 1
    clock.advance(INTERVAL)
    assert recorder.calls == 1


def test_new_matching_file_in_a_watched_directory_fires_one_callback(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    clock, _, recorder = watch([tmp_path], pattern="*.json")
    (tmp_path / "notes.txt").write_text("not matched by the pattern")
    clock.advance(INTERVAL)
    assert recorder.calls == 0
    (tmp_path / "b.json").write_text("{}")
    clock.advance(INTERVAL)
    assert recorder.calls == 1
    clock.advance(INTERVAL)
    assert recorder.calls == 1


def test_watched_file_appearing_fires_one_callback(tmp_path: Path) -> None:
    """A file named directly but absent at start is noticed when it is created."""
    path = tmp_path / "later.pem"
    clock, _, recorder = watch([path])
    clock.advance(INTERVAL)
    assert recorder.calls == 0
    path.write_bytes(b"here now")
    clock.advance(INTERVAL)
    assert recorder.calls == 1


def test_no_change_means_no_callback(tmp_path: Path) -> None:
    """The state at start() is the baseline: existing files are not a change."""
    (tmp_path / "a.pem").write_bytes(b"a")
    (tmp_path / "b.pem").write_bytes(b"b")
    clock, _, recorder = watch([tmp_path, tmp_path / "a.pem"])
    for _ in range(10):
        clock.advance(INTERVAL)
    assert recorder.calls == 0


def test_raising_callback_is_logged_and_the_watcher_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged: list[dict] = []
    monkeypatch.setattr(filewatch, "log", Logger(observer=logged.append))
    path = tmp_path / "cert.pem"
    path.write_bytes(b"one")
    clock, _, recorder = watch([path])
    recorder.fail = True
    path.write_bytes(b"two")
    clock.advance(INTERVAL)
    assert recorder.calls == 1
    [failure] = logged
    assert failure["log_failure"].check(RuntimeError)
    assert failure["paths"] == [str(path)]

    recorder.fail = False
    path.write_bytes(b"three")
    clock.advance(INTERVAL)
    assert recorder.calls == 2, "the next change is still reported"
    assert len(logged) == 1


def test_stop_ends_polling(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"one")
    clock, watcher, recorder = watch([path])
    watcher.stop()
    watcher.stop()  # idempotent
    path.write_bytes(b"two")
    clock.advance(INTERVAL * 3)
    assert recorder.calls == 0
    assert clock.getDelayedCalls() == []


def test_fingerprint_reads_in_chunks_without_an_8_mib_buffer_per_poll(tmp_path: Path) -> None:
    """Fingerprinting a small file allocates about what it reads, not a whole
    ``MAX_HASHED_BYTES`` buffer per poll (every watched file is fingerprinted on every
    poll), and the digest is still the SHA-256 of the file's first 8 MiB."""
    import hashlib
    import tracemalloc

    from gwcore.net import filewatch

    small = tmp_path / "roots.pem"
    small.write_bytes(b"x" * 4096)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _, size, digest = filewatch.fingerprint(small)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (size, digest) == (4096, hashlib.sha256(b"x" * 4096).hexdigest())
    assert peak < 1 << 20, peak

    big = tmp_path / "big"
    big.write_bytes(b"a" * filewatch.MAX_HASHED_BYTES + b"tail")
    _, size, digest = filewatch.fingerprint(big)
    assert size == filewatch.MAX_HASHED_BYTES + 4
    assert digest == hashlib.sha256(b"a" * filewatch.MAX_HASHED_BYTES).hexdigest()
