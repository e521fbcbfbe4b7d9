"""Typed payloads of the event hooks (the addon API).

Each event hook in :mod:`gwcore.contract.hookspecs` receives exactly one of these. Fields are
read-only facts except where a method says otherwise:

- ``veto(reason)`` on a :class:`Vetoable` payload refuses the connection. The first
  veto wins; later ones are ignored (mitmproxy's "first writer wins").
- ``annotate(key, value)`` adds a field to the connection's access-log record.

An addon that raises is logged and counted (``tgw_addon_errors_total``) and the
other addons still run; a raising addon never vetoes by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gwcore.policy.model import Decision, Destination, Endpoint, SpiffeID


@dataclass(slots=True)
class ConnectionInfo:
    """Identifies one downstream connection for its whole life."""

    site: str
    connection_id: int
    client_address: str
    client_port: int
    started: float
    annotations: dict[str, Any] = field(default_factory=dict)
    writer: str | None = field(default=None, repr=False, compare=False)
    """The addon being called (set by the plugin stack while it dispatches)."""
    annotated_by: dict[str, str] | None = field(default=None, repr=False, compare=False)
    """Which addon wrote each annotation key (created on first use)."""
    closer: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    """Set by the connection's driver; what :meth:`close` calls."""

    def close(self, reason: str) -> None:
        """Close this connection now, for ``reason``, at any time of its life (keep the
        ``ConnectionInfo`` from a hook and call this later, on the reactor thread). The
        record's ``close_cause`` is ``addon_close`` and ``close_detail`` the reason; it
        is counted in ``tgw_downstream_rejected_total{reason="addon_close"}``. Closing a
        connection that already ended does nothing."""
        if self.closer is not None:
            self.closer(reason)

    def annotate(self, key: str, value: Any) -> None:
        """Add ``key`` to this connection's access-log record (under ``annotations``).

        A key belongs to the addon that wrote it first: another addon writing it raises
        ``ValueError`` (logged and counted as that addon's error), so two plugins never
        overwrite each other's fields. Prefix keys with your plugin's name."""
        owners = self.annotated_by
        if self.writer is not None:
            if owners is None:
                owners = self.annotated_by = {}
            first = owners.setdefault(key, self.writer)
            if first != self.writer:
                raise ValueError(f"annotation {key!r} belongs to addon {first!r}")
        self.annotations[key] = value


@dataclass(slots=True)
class Vetoable:
    """Base of payloads an addon may use to refuse the connection."""

    vetoed_by: str | None = field(default=None, init=False)
    veto_reason: str | None = field(default=None, init=False)

    def veto(self, reason: str, addon: str = "addon") -> None:
        """Refuse the connection with ``reason``; the first veto wins."""
        if self.veto_reason is None:
            self.veto_reason = reason
            self.vetoed_by = addon


@dataclass(slots=True)
class ClientConnected(Vetoable):
    """A TCP connection was accepted; nothing has been read yet."""

    conn: ConnectionInfo | None = None


@dataclass(slots=True)
class ClientHelloSeen(Vetoable):
    """The ClientHello arrived. ``sni`` is normalised (``None`` if absent);
    ``destination`` is the route it selects, ``None`` for an unknown name."""

    conn: ConnectionInfo | None = None
    sni: str | None = None
    destination: Destination | None = None
    rerouted_to: str | None = field(default=None, init=False)
    rerouted_by: str | None = field(default=None, init=False)

    def route_to(self, sni: str, addon: str = "addon") -> None:
        """Route this connection as if the client had sent ``sni``: its destination and
        the certificate presented are those of that name's route (an unknown name is
        refused as ``unknown_sni``). The first reroute wins; later addons see it in
        ``rerouted_to``. The client must accept that route's certificate (its SPIFFE
        identity), so use it for aliases of one service or for clients that verify
        the mesh CA only."""
        if self.rerouted_to is None:
            self.rerouted_to = sni
            self.rerouted_by = addon


@dataclass(slots=True)
class HandshakeDone(Vetoable):
    """The TLS handshake finished and the client's SPIFFE identity was verified."""

    conn: ConnectionInfo | None = None
    sni: str = ""
    destination: Destination | None = None
    identity: SpiffeID | None = None
    tls_version: str = ""
    cipher: str = ""


@dataclass(slots=True)
class AuthorizationDone(Vetoable):
    """Engines decided. A veto turns an allow into a deny; it cannot allow a deny."""

    conn: ConnectionInfo | None = None
    identity: SpiffeID | None = None
    destination: Destination | None = None
    decision: Decision | None = None


@dataclass(slots=True)
class EndpointChoice:
    """The endpoints the gateway is about to try for an authorized connection, in order
    (after health, ejection and the destination's ``lb_policy``). ``choose`` replaces
    the order."""

    conn: ConnectionInfo
    destination: Destination
    candidates: tuple[Endpoint, ...]
    chosen: tuple[Endpoint, ...] | None = field(default=None, init=False)
    chosen_by: str | None = field(default=None, init=False)

    def choose(self, endpoints: Sequence[Endpoint], addon: str = "addon") -> None:
        """Try ``endpoints`` (a non-empty selection of ``candidates``, in the order
        given) instead; the first addon to choose wins. An endpoint that is not a
        candidate raises ``ValueError`` (an unhealthy or ejected endpoint cannot be
        brought back this way)."""
        picked = tuple(endpoints)
        if not picked or any(e not in self.candidates for e in picked):
            raise ValueError("choose() takes a non-empty selection of event.candidates")
        if self.chosen is None:
            self.chosen = picked
            self.chosen_by = addon


@dataclass(slots=True)
class UpstreamConnected:
    """The gateway reached an endpoint of the destination; splicing starts now."""

    conn: ConnectionInfo
    destination: Destination
    endpoint: Endpoint
    connect_seconds: float
    attempts: int


@dataclass(slots=True)
class UpstreamFailed:
    """One connect attempt to an endpoint failed (there may be a next attempt)."""

    conn: ConnectionInfo
    destination: Destination
    endpoint: Endpoint | None
    reason: str
    final: bool


@dataclass(slots=True)
class ConnectionClosed:
    """The connection is gone. ``record`` is exactly the access-log record written."""

    conn: ConnectionInfo
    record: dict[str, Any]


@dataclass(slots=True)
class SiteStarted:
    """A site is listening. ``address`` is ``host:port`` of its listener."""

    site: str
    address: str


@dataclass(slots=True)
class RoutesChanged:
    """A new route table went live (catalog or certificate change)."""

    site: str
    routes: tuple[str, ...]
    version: str


class EventSink(Protocol):
    """Where the run time's steps send these payloads: the site, which checks for
    listeners first (a payload nobody reads is never built) and dispatches through its
    plugin stack."""

    def has_listeners(self, hook: str) -> bool: ...

    def dispatch(self, hook: str, event: Any) -> None: ...
