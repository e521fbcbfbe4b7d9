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

    def annotate(self, key: str, value: Any) -> None:
        """Add ``key`` to this connection's access-log record (under ``annotations``)."""
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
