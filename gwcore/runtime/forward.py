"""Step 5 of a connection's life, *forward*, and its end: bytes both ways, then the record.

Today forwarding is the byte-exact splice of :mod:`gwcore.net.splice`, optionally after
a PROXY v2 header (:mod:`gwcore.net.proxied`); the forwarder hands the dial step the
protocol for the upstream side (an L7 destination's HTTP session comes from
:mod:`gwcore.runtime.l7_site` instead). The forwarder also
owns what is counted while bytes flow and when they stop: byte metrics flushed on a
periodic sweep and at close, the idle timeout, the connection's duration, its access-log
record and the ``tgw_connection_closed`` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gwcore.contract.events import EventSink
from gwcore.contract.metrics import SiteChildren
from gwcore.net.access_flush import periodic_record
from gwcore.net.proxied import upstream_factory
from gwcore.net.splice import State
from gwcore.policy.config import SiteConfig

if TYPE_CHECKING:
    from gwcore.net.terminator import DownstreamProtocol

SWEEP_INTERVAL = 5.0

AccessLogWriter = Callable[[dict[str, Any]], None]


class Forwarder:
    """The forward step of one site; see the module docstring."""

    def __init__(
        self,
        config: SiteConfig,
        reactor: Any,
        children: SiteChildren,
        log: Logger,
        events: EventSink,
        access_log: AccessLogWriter | None,
        live: Callable[[], Iterable[DownstreamProtocol]],
        listening_address: Callable[[], tuple[str, int] | None] = lambda: None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.children = children
        self.log = log
        self._events = events
        self.access_log = access_log
        self._live = live
        self._listening_address = listening_address
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = reactor

    def upstream_factory(self, conn: DownstreamProtocol, strategy: Any) -> Any:
        """The protocol factory for ``conn``'s upstream side: the splice, after a PROXY v2
        header when ``upstream_proxy_protocol`` is set and ``strategy`` is plain TCP."""
        return upstream_factory(self, conn, strategy)

    def listening_address(self) -> tuple[str, int] | None:
        """The site's listening address (the destination of a PROXY v2 header)."""
        return self._listening_address()

    # --- periodic sweep: byte metrics and idle timeouts ------------------------

    def start(self) -> None:
        self._sweep.start(self.sweep_interval(), now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()

    def sweep_interval(self) -> float:
        limits = (self.config.idle_timeout, self.config.access_log_flush_interval)
        return min([SWEEP_INTERVAL, *(t / 4 for t in limits if t > 0)])

    def flush_bytes(self, conn: DownstreamProtocol) -> None:
        if conn.destination is None:
            return
        up, down = conn.bytes_up - conn.reported_up, conn.bytes_down - conn.reported_down
        if up or down:
            children = self.children.service(conn.destination)
            if up:
                children.bytes_upstream.inc(up)
                conn.reported_up = conn.bytes_up
            if down:
                children.bytes_downstream.inc(down)
                conn.reported_down = conn.bytes_down

    def sweep(self) -> None:
        now = self.reactor.seconds()
        idle = self.config.idle_timeout
        for conn in list(self._live()):
            self.flush_bytes(conn)
            periodic_record(self, conn, now)  # access_log_flush_interval
            if idle <= 0 or conn.state is not State.SPLICING:
                continue
            moved = conn.bytes_up + conn.bytes_down
            seen, since = conn.idle_mark
            if moved != seen or since == 0.0:
                conn.idle_mark = (moved, now)
            elif now - since >= idle:
                conn.close_idle()

    # --- the end of a connection ------------------------------------------------

    def _writer(self) -> AccessLogWriter | None:
        writer = self.access_log
        return writer if writer is not None and getattr(writer, "enabled", True) else None

    def records_wanted(self) -> bool:
        """Whether a connection closing now gets a record (an access log that writes, or a
        ``tgw_connection_closed`` listener): its local addresses are read only then."""
        return self._writer() is not None or self._events.has_listeners("tgw_connection_closed")

    def closed(self, conn: DownstreamProtocol) -> None:
        """Flush ``conn``'s bytes, observe its duration, write its record, send the event."""
        self.flush_bytes(conn)
        self.children.closed(conn.destination, conn.close_cause or "unknown").inc()
        if conn.destination is not None and conn.endpoint is not None:
            self.children.service(conn.destination).connection_seconds.observe(
                time.time() - conn.started
            )
        listeners = self._events.has_listeners("tgw_connection_closed")
        writer = self._writer()
        if conn.close_cause == "no_data" and not self.config.access_log_no_data:
            writer = None  # a load balancer's TCP health check, left out by setting
        if writer is None and not listeners:
            return  # nobody reads the record: do not build it
        record = conn.access_record()
        if writer is not None:
            try:
                writer(record)
            except Exception:
                self.log.failure("writing the access log failed")
        if listeners:
            event = conn.closed_event(record)
            if event is not None:
                self._events.dispatch("tgw_connection_closed", event)
