"""Stopping an instance so that load balancers and catalog clients see it leave first.

On SIGTERM (twistd's ``stopService``) a :class:`~gwcore.runtime.service.GatewayService` does,
in this order:

1. **Withdraw.** The service is marked draining: the admin endpoint's ``/ready``
   answers 503 with ``"draining": true`` from now on (an HTTP health check of a load
   balancer or of Consul turns critical). Every catalog source that registered this
   instance somewhere (``consul_catalog``'s self-registration) is asked to withdraw
   it (``withdraw()``: deregister from the agent), so clients that re-read the
   catalog stop picking this instance.
2. **Keep accepting** for ``[gateway] drain_delay`` (default 0): a client that read
   the catalog just before the withdrawal, or a load balancer between two health
   checks, still gets a working listener instead of a refused connection.
3. **Drain.** Every site stops accepting and waits (all sites at once) up to its
   ``drain_timeout`` for open connections to finish, then closes the rest.
4. Only then do the admin endpoint and the sample service close: ``/ready`` keeps
   answering 503 for the whole drain, so an operator or orchestrator can watch it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

log = Logger(namespace="tgw")


async def withdraw(sites: list[Any]) -> None:
    """Ask every catalog source of ``sites`` that has ``withdraw()`` to take this
    instance out of its catalog (best effort: a failure is logged, the stop goes on)."""
    pending = []
    for site in sites:
        for source in getattr(site, "sources", ()):
            method = getattr(source, "withdraw", None)
            if method is None:
                continue
            d = maybeDeferred(method)
            d.addErrback(
                lambda f, s=site, src=source: log.warn(
                    "site {site}: {source} could not withdraw this instance: {e}",
                    site=s.name,
                    source=getattr(src, "name", src),
                    e=f.getErrorMessage(),
                )
            )
            pending.append(d)
    if pending:
        await DeferredList(pending)


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def drain_sites(service: Any) -> None:
    """Steps 1-3 of the module docstring for ``service`` (a ``GatewayService``)."""
    service.draining = True
    live = list(service.sites.values())
    delay = float(getattr(service.config, "drain_delay", 0.0))
    log.info(
        "draining: /ready answers 503, withdrawing from catalogs, accepting for {delay:g}s more",
        delay=delay,
    )
    await withdraw(live)
    if delay > 0:
        await sleep(service.reactor, delay)
    # Each site says how many connections it drains and how that ended (service._drain).
    stopping = [
        Deferred.fromCoroutine(service._drain(site)) for site in [*live, *service._retiring]
    ]
    results = await DeferredList(stopping, consumeErrors=True)
    for ok, failure in results:
        if not ok:
            log.failure("stopping a site failed", failure)
