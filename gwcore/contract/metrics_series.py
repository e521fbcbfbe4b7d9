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
from collections.abc import Iterable
from typing import Any

from prometheus_client import Gauge
from prometheus_client.registry import Collector


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def use_worker_values() -> None:
    """Multiprocess metric values that know this worker's pid, for a worker's start.

    prometheus-client's multiprocess value calls ``os.getpid()`` (a system call) on
    every ``inc``, ``set`` and ``observe`` to notice a fork. A worker is started by
    exec and never forks a process that goes on updating metrics, so its pid is read
    once here: a connection's fifteen updates cost no system call. Call it before the
    first metric value of the process exists (values made before would write the same
    file through another handle).
    """
    from prometheus_client import values

    if not multiprocess():
        return
    pid = os.getpid()
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid)


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
