"""Saturation signals sampled once a second: event-loop lag and per-process usage.

``tgw_event_loop_lag_seconds`` is how late the last one-second tick ran (a busy or
blocked reactor delays every connection). ``tgw_process_*`` are prometheus-client's
process collector values (CPU, resident memory, open descriptors) copied into gauges
with a ``pid`` label, so that with ``workers = N`` each worker is seen (worker 0's
``/metrics`` only has its own process collector otherwise).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.task import LoopingCall

from gwcore.contract.metrics import GatewayMetrics

INTERVAL = 1.0

_COPIED = {
    "process_cpu_seconds_total": "tgw_process_cpu_seconds",
    "process_resident_memory_bytes": "tgw_process_resident_memory_bytes",
    "process_open_fds": "tgw_process_open_fds",
    "process_max_fds": "tgw_process_max_fds",
}


class SaturationSampler:
    """Samples every :data:`INTERVAL` seconds on ``clock`` while started."""

    def __init__(self, metrics: GatewayMetrics, clock: Any) -> None:
        self._clock = clock
        self._lag = metrics.family(
            Gauge,
            "tgw_event_loop_lag_seconds",
            "How late the reactor ran the last once-a-second tick (per process).",
            [],
            multiprocess_mode="livemax",
        )
        self._process = {
            source: metrics.family(
                Gauge,
                name,
                f"prometheus-client's {source}, per process (pid label with workers).",
                [],
                multiprocess_mode="liveall",
            )
            for source, name in _COPIED.items()
        }
        self._collector = ProcessCollector(registry=None)
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock
        self._due: float | None = None

    def start(self) -> None:
        self._due = None
        self._loop.start(INTERVAL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        now = self._clock.seconds()
        if self._due is not None:
            self._lag.set(max(0.0, now - self._due))
        self._due = now + INTERVAL
        for family in self._collector.collect():
            for sample in family.samples:
                gauge = self._process.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)
