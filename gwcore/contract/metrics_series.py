"""Series that leave: removing a labelled gauge child in both prometheus-client modes.

In one process ``Gauge.remove()`` deletes the series. With workers (multiprocess
mode) values live in per-process files that ``remove()`` does not touch (and it
warns), so the series would stay on dashboards for ever. Here a removed child is
set to NaN instead, and the exposition collector leaves NaN gauge samples out.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import Gauge
from prometheus_client.registry import Collector


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def use_worker_values() -> None:
    """Multiprocess metric values for a worker (:func:`worker_value_class`), for a
    worker's start: call it before the first metric value of the process exists
    (values made before would write the same file through another handle)."""
    from prometheus_client import values

    if not multiprocess():
        return
    values.ValueClass = worker_value_class(os.getpid())


_DOUBLES = struct.Struct("dd").pack


def worker_value_class(pid: int) -> type:
    """prometheus-client's multiprocess value, made for a worker's updates.

    A worker's value is the library's own ``MmapedValue`` (same files, same entries,
    same exposition), with ``inc`` and ``set`` doing only what a worker needs. The
    library's versions call ``os.getpid()`` (a system call) to notice a fork, and then
    ``write_value`` and a packing helper: four Python calls more than a single
    process's update, about fifteen updates per handshake. A worker is started by exec
    and never forks a process that goes on updating metrics, so the pid is read once,
    and the value writes its two doubles straight into its entry of the file (the
    entry's position never moves; the file's mapping may be replaced when it grows, so
    it is looked up on each write). The write is one slice assignment, as the library
    makes it (never ``pack_into``, which zeroes the bytes first: a reader could see 0).
    Values whose file object lacks the attributes relied on (another prometheus-client)
    use the library's methods.
    """
    from prometheus_client import values

    base: Any = values.MultiProcessValue(process_identifier=lambda: pid)
    lock = threading.Lock()

    class WorkerValue(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The library's read of the initial value has created the entry.
            positions = getattr(self._file, "_positions", None)
            known = isinstance(positions, dict) and hasattr(self._file, "_m")
            self._pos: int | None = positions.get(self._key) if known else None

        def inc(self, amount: float) -> None:
            pos = self._pos
            if pos is None:
                return super().inc(amount)
            with lock:
                self._value += amount
                self._timestamp = 0.0
                self._file._m[pos : pos + 16] = _DOUBLES(self._value, 0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            pos = self._pos
            if pos is None:
                return super().set(value, timestamp)
            with lock:
                self._value = value
                self._timestamp = timestamp or 0.0
                self._file._m[pos : pos + 16] = _DOUBLES(value, self._timestamp)

    return WorkerValue


def remove_series(family: Any, *labelvalues: str) -> None:
    """Delete ``family``'s child for ``labelvalues`` (no error if it is not there).

    With workers only gauges can leave (a counter's or histogram's file value stays:
    it stops moving, as a counter of a service that left does anyway)."""
    if multiprocess():
        if isinstance(family, Gauge):
            family.labels(*labelvalues).set(math.nan)
        return
    with contextlib.suppress(KeyError):
        family.remove(*labelvalues)


class LiveMultiProcessCollector(Collector):
    """prometheus-client's multiprocess collector without removed (NaN) gauge series."""

    def __init__(self, path: str | None = None) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._inner = MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Any]:
        for family in self._inner.collect():
            if family.type == "gauge":
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
            yield family
