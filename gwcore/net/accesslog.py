"""The access log: one JSON object per line, one line per downstream connection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


class AccessLog:
    """Writes records to a file, to standard output (``"-"``), or nowhere (``""``).

    Standard output is duplicated when the log is opened, so the lines stay raw
    JSON even after twistd redirects ``sys.stdout`` into its own logger.
    :meth:`reopen` supports log rotation (``SIGHUP``).
    """

    def __init__(self, target: str, base_dir: Path) -> None:
        self.target = target
        self._path = None if target in ("", "-") else (base_dir / target)
        self._file: IO[str] | None = None
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
        if old is not None:
            old.close()

    @property
    def enabled(self) -> bool:
        """Whether records go anywhere (``access_log = ""`` writes none)."""
        return self.target != ""

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")

    __call__ = write

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
