"""Notice when files change on disk, whichever way they were written.

Polling, not inotify: it sees in-place writes, atomic renames (``mv new cur``),
symlink swaps (Kubernetes' ``..data`` trick) and deletions alike, on every
filesystem, and is trivially testable with a fake clock. A fingerprint is the
file's identity plus a digest of its content, so a rewrite with the same size
inside one mtime tick is still seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

MAX_HASHED_BYTES = 8 * 1024 * 1024

Fingerprint = tuple[int, int, str]  # (inode, size, content digest)

log = Logger()


def expand(paths: Sequence[Path], pattern: str | tuple[str, ...]) -> list[Path]:
    """Files named directly, plus files matching ``pattern`` (one glob or several) in
    named directories, sorted."""
    patterns = (pattern,) if isinstance(pattern, str) else pattern
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted({p for g in patterns for p in path.glob(g) if p.is_file()}))
        else:
            found.append(path)
    return found


_CHUNK = 64 * 1024


def _digest(f: BinaryIO) -> str:
    """SHA-256 of the first :data:`MAX_HASHED_BYTES` of ``f``, read in 64 KiB chunks (one
    ``read(MAX_HASHED_BYTES)`` allocates its whole 8 MiB buffer on every poll)."""
    h = hashlib.sha256()
    left = MAX_HASHED_BYTES
    while left > 0 and (chunk := f.read(min(_CHUNK, left))):
        h.update(chunk)
        left -= len(chunk)
    return h.hexdigest()


def fingerprint(path: Path) -> Fingerprint | None:
    """Identity and content digest of ``path`` (following symlinks); ``None`` if unreadable."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            digest = _digest(f)
    except OSError:
        return None
    return (st.st_ino, st.st_size, digest)


class FileWatcher:
    """Calls ``on_change()`` after any watched file changes, appears or disappears.

    ``paths`` may name files or directories (whose files matching ``pattern`` are
    watched, so new files are noticed). The first check at :meth:`start` records the
    current state without calling back.
    """

    def __init__(
        self,
        clock: IReactorTime,
        paths: Sequence[Path],
        on_change: Callable[[], None],
        *,
        interval: float = 1.0,
        pattern: str | tuple[str, ...] = "*",
        on_unchanged: Callable[[], None] | None = None,
    ) -> None:
        self.paths = list(paths)
        self.pattern = pattern
        self.interval = interval
        self._on_change = on_change
        self._on_unchanged = on_unchanged  # a successful check that found nothing new
        self._state: dict[Path, Fingerprint | None] = {}
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def current(self) -> dict[Path, Fingerprint | None]:
        return {p: fingerprint(p) for p in expand(self.paths, self.pattern)}

    def start(self) -> None:
        self._state = self.current()
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> bool:
        """Compare with the last state; call back (once) if anything changed."""
        state = self.current()
        if state == self._state:
            if self._on_unchanged is not None:
                self._on_unchanged()
            return False
        self._state = state
        try:
            self._on_change()
        except Exception:
            log.failure(
                "file change callback failed for {paths}", paths=[str(p) for p in self.paths]
            )
        return True
