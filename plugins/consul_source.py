"""What the Consul catalog sources of a terminating site (``consul_catalog``) and of a
mesh site (``consul_mesh``) share at the end of their lives and on a failed read: stop
the watches, deregister, release the client; report freshness; count a failure and fail
the first snapshot while none arrived."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred

from gwcore.contract.providers import SourceHealth
from gwcore.net.consul import release_client
from gwcore.plugins.consul_registration import SelfRegistration

if TYPE_CHECKING:
    from gwcore.net.consul import ConsulError


class ConsulSource(SelfRegistration):
    """A self-registering Consul source with blocking watches. Subclasses set
    ``client``, ``freshness``, ``_errors`` (a counter child), ``_first`` (the first
    snapshot's Deferred) and ``_watch_pool_stopped`` (what stopping the watches returned)."""

    client: Any
    freshness: Any
    _errors: Any
    _first: Any
    _watch_pool_stopped: Any

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
