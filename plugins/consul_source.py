"""What the Consul catalog sources of a terminating site (``consul_catalog``) and of a
mesh site (``consul_mesh``) share at the end of their lives and on a failed read: stop
the watches, deregister, release the client; report freshness; count a failure and fail
the first snapshot while none arrived."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred

from gwcore.contract.providers import SourceHealth
from gwcore.net.consul import ConsulFreshness, release_client
from gwcore.plugins.consul_registration import SelfRegistration

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred

    from gwcore.contract.providers import SiteContext
    from gwcore.net.consul import ConsulClient, ConsulError
    from gwcore.net.consul_watch import BlockingWatch
    from gwcore.policy.model import CatalogSnapshot

NAME = "consul_catalog"


class ConsulSource(SelfRegistration):
    """A self-registering Consul source with blocking watches: the state both sources
    keep from construction (the client, freshness, the first snapshot's Deferred, the
    watches, the retry timer, what was reported once, the registration), set here."""

    def __init__(self, site: SiteContext, settings: Any) -> None:
        self._site = site
        self.settings = settings
        self.gateway = settings.gateway
        self._datacenter = site.config.datacenter
        self._rng = random.Random()
        self.client: ConsulClient | None = None
        self.freshness = ConsulFreshness(site, NAME)
        self._watch_pool_stopped: Any = None
        self._version: str | None = None
        self._publish: Callable[[CatalogSnapshot], None] | None = None
        self._first: Deferred[None] | None = None
        self._watches: list[BlockingWatch] = []
        self._retry: Any = None
        self._retry_failures = 0
        self._reported: set[str] = set()
        self._detectors_seen: set[str] = set()
        self._running = False
        self.service_id: str | None = None
        self._registered = False
        self._withdrawn = False
        self._register_call: Any = None
        self._register_failures = 0
        labels = {"site": site.name, "source": NAME}
        self._errors = site.metrics.catalog_errors.labels(**labels)
        self._last_success_gauge = site.metrics.catalog_last_success.labels(**labels)

    async def _stop(self) -> None:
        if self._watch_pool_stopped is not None:
            await self._watch_pool_stopped
        await self._deregister()
        if self.client is not None:
            client, self.client = self.client, None
            await maybeDeferred(release_client, client)

    def health(self) -> SourceHealth:
        return SourceHealth(self.freshness.last_success, self.freshness.error)

    def _failed(self, error: ConsulError) -> None:
        self._errors.inc()
        self.freshness.failed(error)
        if self._first is not None and not self._first.called:
            self._first.errback(error)
