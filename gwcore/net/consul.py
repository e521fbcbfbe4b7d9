"""Talking to a Consul agent over HTTP: one bounded client, and blocking-query watches.

Rules of the blocking-query loop (reference §5, Consul's ``api-docs/features/blocking``):

1. The first query of a watch has no ``index`` and returns at once. Every later query
   sends ``?index=<last X-Consul-Index>&wait=<wait>``; the agent holds it until the
   result changes or ``wait`` (plus up to wait/16 of jitter) has passed.
2. A return does not mean a change: the watch calls its ``on_change`` only when the
   index moved, and the callers compare content before they publish anything.
3. An index that goes **backwards** (the agent restarted, a snapshot was restored)
   resets the watch to index 0, so the next query is a fresh non-blocking read.
4. An index below 1 is used as 1, so a broken agent cannot turn the loop into a busy
   poll of non-blocking reads.
5. Queries of one watch are rate limited by a token bucket (``rate`` per second, burst
   2), whatever the agent answers.
6. A failed query (no connection, a timeout, a non-2xx answer, bad JSON) is retried
   after an exponential back-off with jitter: ``d = min(retry_max, retry_min * 2**n)``
   and the delay is uniform in ``[d/2, d]``. The error goes to ``on_error`` each time;
   the watch never stops on its own.
7. :meth:`BlockingWatch.stop` cancels the query in flight and any pending timer.

Where each part lives: connection settings and errors in :mod:`gwcore.net.consul_settings`,
the HTTP client in :mod:`gwcore.net.consul_client`, the blocking watch and freshness in
:mod:`gwcore.net.consul_blocking`; registration is ``gwcore.plugins.consul_registration``.
Every public name stays importable from here.

Sockets: every request of a :class:`ConsulClient` waits for one of ``max_connections``
slots, and finished connections are kept (up to the same number) for reuse, so a
client never holds more than ``max_connections`` sockets whatever the number of
watches. Plugins of one process that name the same agent with the same settings
share one client (:func:`acquire_client`).
"""

from __future__ import annotations

from gwcore.net.consul_blocking import BlockingWatch, ConsulFreshness, backoff_delay
from gwcore.net.consul_client import ConsulClient, acquire_client, release_client
from gwcore.net.consul_settings import (
    CONNECTION_KEYS,
    DEFAULT_ADDRESS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_RATE,
    DEFAULT_RETRY_MAX,
    DEFAULT_RETRY_MIN,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT,
    MAX_BODY,
    MAX_WAIT,
    MIN_MAX_CONNECTIONS,
    PERMISSIONS,
    RATE_BURST,
    TOKEN_HEADER,
    ConsulError,
    ConsulResponse,
    ConsulSettings,
    check_files,
    connection_problems,
    read_consul_settings,
)

__all__ = [
    "CONNECTION_KEYS",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_RATE",
    "DEFAULT_RETRY_MAX",
    "DEFAULT_RETRY_MIN",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT",
    "MAX_BODY",
    "MAX_WAIT",
    "MIN_MAX_CONNECTIONS",
    "PERMISSIONS",
    "RATE_BURST",
    "TOKEN_HEADER",
    "BlockingWatch",
    "ConsulClient",
    "ConsulError",
    "ConsulFreshness",
    "ConsulResponse",
    "ConsulSettings",
    "acquire_client",
    "backoff_delay",
    "check_files",
    "connection_problems",
    "read_consul_settings",
    "release_client",
]
