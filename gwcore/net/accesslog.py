"""The access log: one JSON object per line, one line per downstream connection."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from twisted.logger import Logger

_log = Logger(namespace="tgw.accesslog")


class AccessLog:
    """Writes records to a file, to standard output (``"-"``), or nowhere (``""``).

    Standard output is duplicated when the log is opened, so the lines stay raw
    JSON even after twistd redirects ``sys.stdout`` into its own logger.
    :meth:`reopen` supports log rotation (``SIGHUP``).

    A write that fails (disk full, quota, I/O error) never reaches the connection
    that is closing: the record is dropped, ``dropped`` is called (the
    ``tgw_access_log_dropped_total`` counter), and one line is logged when writes
    start failing and one when they work again, not one per record. The buffer
    holding the failed line is thrown away (reopened), so memory stays bounded and
    a later record never lands glued to half of a lost one.
    """

    def __init__(
        self, target: str, base_dir: Path, dropped: Callable[[], None] | None = None
    ) -> None:
        self.target = target
        self._path = None if target in ("", "-") else (base_dir / target)
        self._file: IO[str] | None = None
        self._dropped = dropped
        self.dropped = 0
        self._failing: str | None = None  # the error while writes fail
        self._torn = False  # the file may end in a partial line
        self.reopen()

    def reopen(self) -> None:
        old = self._file
        if self.target == "":
            self._file = None
        elif self._path is None:
            self._file = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        else:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._torn = _ends_mid_line(self._path)
        if old is not None:
            with contextlib.suppress(OSError):  # flushing what failed fails again
                old.close()

    @property
    def enabled(self) -> bool:
        """Whether records go anywhere (``access_log = ""`` writes none)."""
        return self.target != ""

    def write(self, record: dict[str, Any]) -> None:
        if self.target == "":
            return
        if self._file is None:  # it could not be reopened after a failure
            try:
                self.reopen()
            except OSError as e:
                self._failed(e)
                return
        assert self._file is not None
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            self._file.write("\n" + line if self._torn else line)
        except OSError as e:
            self._failed(e)
            return
        self._torn = False
        if self._failing is not None:
            _log.info(
                "access log {target}: writing again; {n} records were dropped",
                target=self.target,
                n=self.dropped,
            )
            self._failing = None

    __call__ = write

    def _failed(self, error: OSError) -> None:
        self.dropped += 1
        if self._dropped is not None:
            self._dropped()
        if self._failing is None:
            self._failing = error.strerror or str(error)
            _log.error(
                "access log {target}: {error}; records are dropped and counted "
                "(tgw_access_log_dropped_total) until a write succeeds",
                target=self.target,
                error=self._failing,
            )
        old, self._file = self._file, None
        if old is not None:
            with contextlib.suppress(OSError):  # flushing the unwritten line fails again
                old.close()
        # Reopened at the next record; a partial line written before the failure is
        # ended then (reopen checks the file's last byte).

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last byte is something other than a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False  # /dev/full, a FIFO...: nothing to repair
