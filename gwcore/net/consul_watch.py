"""One blocking ``/v1/health/service/<name>`` query per linked service, over a bounded pool.

This is what Consul's own terminating gateway watches (``agent/proxycfg/
terminating_gateway.go``): the health of each linked service on its own. Consul moves
a service's index (``service.<name>``) on every change that alters the answer: an
instance or check change, and a change of the node it runs on
(``updateAllServiceIndexesOfNode``), which moves neither ``/v1/catalog/services`` nor
``/v1/health/state/any``. So a per-service watch sees a node that moved.

Rules:

1. At most ``limit`` services are watched at a time, each by its own
   :class:`~gwcore.net.consul.BlockingWatch` on a client of its own whose pool holds
   ``limit`` sockets, so the long polls never take the slots of short requests.
2. Services are watched in name order; those beyond ``limit`` are the
   :attr:`ServiceHealthWatches.overflow`, which the caller covers otherwise (``consul_catalog``
   re-reads them when the ``services``, ``nodes`` or ``checks`` table moves, which a
   change of their answer always does). When a watched service goes, the first
   overflow service takes its place.
3. A watch may start at a known index (the one of a read just made), so it blocks at
   once instead of reading the same answer again.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from gwcore.net.consul import (
    BlockingWatch,
    ConsulClient,
    ConsulError,
    ConsulResponse,
    ConsulSettings,
    acquire_client,
    release_client,
)

DEFAULT_HEALTH_WATCHES = 128  # + 16 shared sockets stays under Consul's 200 per client IP
ENDPOINT = "health-service"


def health_path(service: str) -> str:
    return f"/v1/health/service/{quote(service, safe='')}"


def scope_query(namespace: str, partition: str) -> list[tuple[str, str]]:
    """``?ns=`` and ``?partition=`` for a non-default namespace or partition (Enterprise).

    Left out for ``default``, so a CE agent, which knows neither, gets the same
    requests as before.
    """
    query = []
    if namespace and namespace != "default":
        query.append(("ns", namespace))
    if partition and partition != "default":
        query.append(("partition", partition))
    return query


class ServiceHealthWatches:
    """Per-service blocking health queries, at most ``limit`` at once (module rules)."""

    def __init__(
        self,
        reactor: Any,
        settings: ConsulSettings,
        limit: int,
        on_change: Callable[[str, ConsulResponse], Any],
        on_error: Callable[[ConsulError], None],
        *,
        on_ok: Callable[[str], None] | None = None,
        query: Callable[[str], list[tuple[str, str]]] = lambda _: [],
        rng: random.Random | None = None,
        path: Callable[[str], str] = health_path,
    ) -> None:
        self._path = path
        self.limit = limit
        self._reactor = reactor
        self._settings = dataclasses.replace(settings, max_connections=max(1, limit))
        self._on_change = on_change
        self._on_error = on_error
        self._on_ok = on_ok
        self._query = query
        self._rng = rng or random.Random()
        self._client: ConsulClient | None = None
        self._watches: dict[str, BlockingWatch] = {}
        self.overflow: tuple[str, ...] = ()

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._watches)

    def update(self, services: Iterable[str], known: Mapping[str, int] | None = None) -> None:
        """Watch ``services`` (rule 2); ``known`` gives indexes of answers already read."""
        wanted = sorted(set(services))
        known = known or {}
        for gone in set(self._watches) - set(wanted):
            self._watches.pop(gone).stop()
        for service in wanted:
            if len(self._watches) >= self.limit:
                break
            if service not in self._watches:
                self._start(service, known.get(service, 0))
        self.overflow = tuple(s for s in wanted if s not in self._watches)

    def _start(self, service: str, index: int) -> None:
        if self._client is None:
            self._client = acquire_client(self._reactor, self._settings)
        watch = BlockingWatch(
            self._client,
            ENDPOINT,
            self._path(service),
            lambda response, s=service: self._on_change(s, response),
            self._on_error,
            query=self._query(service),
            on_ok=self._on_ok,
            rng=self._rng,
            index=index,
        )
        self._watches[service] = watch
        watch.start()

    def stop(self) -> Any:
        """Stop every watch and give the client back (a Deferred, or None)."""
        for watch in self._watches.values():
            watch.stop()
        self._watches.clear()
        self.overflow = ()
        client, self._client = self._client, None
        return release_client(client) if client is not None else None
