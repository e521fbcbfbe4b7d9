"""Hostname endpoints: every instance, every address, kept fresh at the record's TTL.

A catalog instance whose address is a hostname (``billing.corp.example``) becomes
one endpoint per address the name resolves to, with the instance's health and
weight — for *every* such instance, not only the first (Consul's issue #16040
uses one hostname per cluster). ``localhost`` and ``*.localhost`` are the loopback
addresses without any lookup (RFC 6761); a name the hosts file lists is answered
from it (re-read when it changes), as getaddrinfo and Envoy do; any other name is
resolved asynchronously with Twisted
Names through a :class:`~gwcore.net.resolver.DNSWatch`: asked again when its TTL
(clamped to ``dns_min_ttl``..``dns_max_ttl``) runs out, and its last good answer
served for up to ``dns_max_stale`` while the resolver fails. A name with nothing
in force contributes no endpoint (the destination then answers "no healthy
endpoints" if it has no other). When an answer changes, the site rebuilds its
route table; connections in flight keep the endpoint they have. Each address
endpoint's meta says which name it came from (``hostname``) and which source
answered (``address_source``: ``localhost``, ``hosts`` or ``dns``); the access log
shows both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import DeferredList
from twisted.logger import Logger

from gwcore.net.resolver import AddressAnswer, DNSResolver, DNSWatch, WatchUpdate
from gwcore.policy.dns_records import Family, RefreshPolicy, is_ip_literal
from gwcore.policy.model import Destination, Endpoint

log = Logger(namespace="tgw.hostnames")


class HostnameEndpoints:
    """Expands hostname endpoints of a site's destinations (see the module docstring)."""

    def __init__(
        self,
        reactor: Any,
        resolver: DNSResolver,
        policy: RefreshPolicy,
        family: Family,
        on_change: Callable[[], None],
        on_result: Callable[[str], None] | None = None,
        on_source: Callable[[str], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._policy = policy
        self._family = family
        self._on_change = on_change
        self._on_result = on_result
        self._on_source = on_source
        self._watches: dict[str, DNSWatch[AddressAnswer]] = {}

    @staticmethod
    def hostnames(destinations: Iterable[Destination]) -> set[str]:
        return {
            e.address.lower()
            for d in destinations
            for e in d.endpoints
            if not is_ip_literal(e.address)
        }

    async def expand(self, destinations: tuple[Destination, ...]) -> tuple[Destination, ...]:
        """Destinations with hostname endpoints replaced by address endpoints.

        New names are resolved first (each lookup is bounded by the resolver's
        timeout); names no longer used stop being watched.
        """
        wanted = self.hostnames(destinations)
        for name in set(self._watches) - wanted:
            self._watches.pop(name).stop()
        fresh = []
        for name in sorted(wanted - set(self._watches)):
            watch: DNSWatch[AddressAnswer] = DNSWatch(
                self._reactor,
                name,
                lambda name=name: self._resolver.resolve_addresses(name, self._family),
                self._policy,
                self._updated,
            )
            self._watches[name] = watch
            fresh.append(watch.start())
        if fresh:
            await DeferredList(fresh, consumeErrors=True)
        if not wanted:
            return destinations
        return tuple(self._expand(d) for d in destinations)

    def _expand(self, destination: Destination) -> Destination:
        if all(is_ip_literal(e.address) for e in destination.endpoints):
            return destination
        endpoints: list[Endpoint] = []
        for endpoint in destination.endpoints:
            if is_ip_literal(endpoint.address):
                endpoints.append(endpoint)
                continue
            watch = self._watches.get(endpoint.address.lower())
            answer = watch.answer if watch is not None else None
            for address in answer.addresses if answer is not None else ():
                endpoints.append(
                    replace(
                        endpoint,
                        address=address,
                        meta={
                            **endpoint.meta,
                            "hostname": endpoint.address,
                            "address_source": answer.source,
                        },
                    )
                )
        return replace(destination, endpoints=tuple(endpoints))

    def _updated(self, update: WatchUpdate[AddressAnswer]) -> None:
        if self._on_result is not None:
            self._on_result(update.result)
        if self._on_source is not None and update.result == "success" and update.answer:
            self._on_source(update.answer.source)
        if update.step.event:
            log.info(
                "hostname {name}: {event} ({result}{error})",
                name=update.name,
                event=update.step.event,
                result=update.result,
                error=f": {update.error}" if update.error else "",
            )
        if update.step.changed:
            self._on_change()

    def stop(self) -> None:
        for watch in self._watches.values():
            watch.stop()
        self._watches.clear()
        self._resolver.close()
