"""Blocking-query watches of a Consul agent, and the freshness of the data they bring.

The rules of the loop are listed in :mod:`gwcore.net.consul`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    maybeDeferred,
)

from gwcore.net.consul_settings import PERMISSIONS, RATE_BURST, ConsulError

if TYPE_CHECKING:
    from gwcore.net.consul_client import ConsulClient
    from gwcore.net.consul_settings import ConsulResponse


# --- the watch loop ----------------------------------------------------------------


class _TokenBucket:
    def __init__(self, clock: Any, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._at = clock.seconds()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one is available)."""
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


def backoff_delay(failures: int, retry_min: float, retry_max: float, rng: random.Random) -> float:
    """Rule 6: exponential back-off with jitter for the ``failures``-th failure in a row."""
    ceiling = min(retry_max, retry_min * 2 ** max(0, failures - 1))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass
class BlockingWatch:
    """A blocking-query loop on one endpoint (rules at the top of this module).

    ``on_change(response)`` runs when the index moved (it may return a Deferred, which
    the loop awaits before the next query); ``on_ok(endpoint)`` after every answer,
    changed or not; ``on_error(error)`` on every failure. A change handler that raises
    is reported through ``on_error`` too.
    """

    client: ConsulClient
    endpoint: str
    path: str
    on_change: Callable[[ConsulResponse], Any]
    on_error: Callable[[ConsulError], None]
    query: Sequence[tuple[str, str]] = ()
    on_ok: Callable[[str], None] | None = None
    wait: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    index: int = 0
    failures: int = 0
    resets: int = 0
    queries: int = 0
    _running: bool = False
    _pending: Deferred[Any] | None = None
    _done: Deferred[None] | None = None

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._bucket = _TokenBucket(self.client.reactor, self.client.settings.rate, RATE_BURST)
        self._done = Deferred.fromCoroutine(self._loop())
        self._done.addErrback(lambda f: f.trap(CancelledError))

    def stop(self) -> None:
        self._running = False
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()

    @property
    def running(self) -> bool:
        return self._running

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred(lambda _: call.cancel() if call.active() else None)
        call = self.client.reactor.callLater(seconds, d.callback, None)
        return d

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    async def _loop(self) -> None:
        settings = self.client.settings
        while self._running:
            delay = self._bucket.delay()
            if delay > 0:
                await self._wait(self._sleep(delay))
                if not self._running:
                    return
            self.queries += 1
            try:
                response = await self._wait(
                    self.client.get(
                        self.endpoint, self.path, self.query, index=self.index, wait=self.wait
                    )
                )
            except ConsulError as e:
                if not self._running:
                    return
                self.failures += 1
                self._report(e)
                await self._wait(
                    self._sleep(
                        backoff_delay(
                            self.failures, settings.retry_min, settings.retry_max, self.rng
                        )
                    )
                )
                continue
            except CancelledError:
                return
            if not self._running:
                return
            self.failures = 0
            if self.on_ok is not None:
                with contextlib.suppress(Exception):
                    self.on_ok(self.endpoint)
            new = response.index
            if self.index and new < self.index:
                self.index = 0  # rule 3: start over with a non-blocking read
                self.resets += 1
                continue
            if new == self.index and self.index:
                continue  # rule 2: wait expired, nothing changed
            self.index = max(new, 1)  # rule 4
            try:
                await self._wait(maybeDeferred(self.on_change, response))
            except CancelledError:
                return
            except Exception as e:
                self._report(
                    e
                    if isinstance(e, ConsulError)
                    else ConsulError(self.endpoint, "invalid", str(e))
                )
                # Read again from scratch next time, after a pause: the data was unusable.
                self.index = 0
                self.failures += 1
                await self._wait(
                    self._sleep(
                        backoff_delay(
                            self.failures, settings.retry_min, settings.retry_max, self.rng
                        )
                    )
                )

    def _report(self, error: ConsulError) -> None:
        with contextlib.suppress(Exception):  # a reporter must not stop the watch
            self.on_error(error)


# --- freshness, errors and metrics of one plugin's Consul data ----------------------


class ConsulFreshness:
    """How fresh one plugin's Consul data is, reported the same way by every Consul plugin.

    Each endpoint a plugin reads is ``ok`` or failing. ``last_success`` moves when
    every endpoint is ok. Metrics (all with ``site`` and ``plugin`` labels):
    ``tgw_consul_errors_total{endpoint,kind}`` per failure and
    ``tgw_consul_staleness_seconds``, 0 while everything is fresh and otherwise the
    seconds since the data was last known good. A failure is logged when an endpoint
    starts failing (a 403 once per endpoint and process, naming the permission it
    needs) and when it recovers, never once per retry.
    """

    def __init__(self, site: Any, plugin: str) -> None:
        from prometheus_client import Counter, Gauge

        self._site = site
        self._plugin = plugin
        self._clock = site.reactor
        self.last_success: float | None = None
        self._failing: dict[str, str] = {}
        self._acl_reported: set[str] = set()
        self._started = self._clock.seconds()
        errors = site.metrics.family(
            Counter,
            "tgw_consul_errors",
            "Failed Consul requests, by plugin, endpoint and kind (http_500, acl_denied, "
            "timeout, unreachable, invalid). The last good data stays in force.",
            ["site", "plugin", "endpoint", "kind"],
        )
        self._errors = errors
        staleness = site.metrics.family(
            Gauge,
            "tgw_consul_staleness_seconds",
            "0 while a Consul plugin's data is fresh; otherwise seconds since it was last "
            "known good (since start when it never was).",
            ["site", "plugin"],
        )
        self._last_success_gauge = site.metrics.family(
            Gauge,
            "tgw_consul_last_success_timestamp_seconds",
            "When every Consul endpoint a plugin reads last answered successfully.",
            ["site", "plugin"],
            multiprocess_mode="livemax",
        ).labels(site=site.name, plugin=plugin)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # A callback gauge is exported as 0 by workers: there, use the timestamp.
            staleness.labels(site=site.name, plugin=plugin).set_function(self.staleness)

    def staleness(self) -> float:
        if not self._failing and self.last_success is not None:
            return 0.0
        since = self.last_success if self.last_success is not None else self._started
        return max(0.0, self._clock.seconds() - since)

    @property
    def error(self) -> str | None:
        return "; ".join(self._failing.values()) or None

    def ok(self, endpoint: str) -> None:
        if self._failing.pop(endpoint, None) is not None:
            self._site.log.info(
                "{plugin}: Consul {endpoint} answers again", plugin=self._plugin, endpoint=endpoint
            )
        if not self._failing:
            self.last_success = self._clock.seconds()
            self._last_success_gauge.set(self.last_success)

    def failed(self, error: ConsulError) -> None:
        self._errors.labels(
            site=self._site.name, plugin=self._plugin, endpoint=error.endpoint, kind=error.kind
        ).inc()
        first = error.endpoint not in self._failing
        self._failing[error.endpoint] = str(error)
        if error.kind == "acl_denied":
            if error.endpoint in self._acl_reported:
                return
            self._acl_reported.add(error.endpoint)
            self._site.log.error(
                "{plugin}: Consul refused {endpoint} (403): the token needs {permission}; "
                "the last good data stays in force",
                plugin=self._plugin,
                endpoint=error.endpoint,
                permission=PERMISSIONS.get(error.endpoint.partition(":")[0], "more permissions"),
            )
        elif first:
            self._site.log.warn(
                "{plugin}: Consul {endpoint} failed ({error}); retrying with back-off, "
                "the last good data stays in force",
                plugin=self._plugin,
                endpoint=error.endpoint,
                error=str(error),
            )
