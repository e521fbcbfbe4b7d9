"""The whole plugin contract of tgw: every hook a plugin or addon may implement.

Each site has its own plugin manager holding the plugins its ``plugins`` stack
names, in that order, then the essential plugins it does not name (``mesh_hop``,
``upstream_tls``, ``plain_upstream``). Hooks come in three groups:

**Configuration** — called by ``tgw check-config`` and before a site starts.

**Provider hooks** — called once when a site starts. Each returns a sequence of
provider objects (see :mod:`gwcore.contract.providers`); the site collects the results of
every plugin *in stack order* (not pluggy's LIFO order). Async work belongs in the
providers' methods, which may return Deferreds; hooks themselves are synchronous.
What a provider hook returns is checked when the site starts: a list (or tuple) of
objects with every member of their protocol; anything else refuses the start, naming
the plugin and the member.

**Event hooks** — the addon API, called per connection or per site event with one
typed payload from :mod:`gwcore.contract.events`. Every implementation is called (in stack
order); one that raises is logged and counted and the others still run. Payloads
say which fields an addon may change (``veto``, ``annotate``). Event hooks are plain
functions: an ``async def`` implementation is refused when the stack loads (nobody
would await its coroutine).

Implementations are methods or functions named exactly like the hooks, marked
with :data:`hookimpl` or (for drop-in addons) left unmarked. A name starting with
``tgw_`` that matches no hook is an error at start-up, so a typo never silently
disables an addon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gwcore.contract.events import (
        AuthorizationDone,
        ClientConnected,
        ClientHelloSeen,
        ConnectionClosed,
        EndpointChoice,
        HandshakeDone,
        RoutesChanged,
        SiteStarted,
        UpstreamConnected,
        UpstreamFailed,
    )
    from gwcore.contract.providers import (
        AuthorizationEngine,
        CatalogSource,
        CertificateProvider,
        SiteContext,
        UpstreamStrategy,
    )
    from gwcore.policy.config import ConfigProblem, SiteConfig

PROJECT = "tgw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- configuration ---------------------------------------------------------------


@hookspec
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    """Check this plugin's own section of ``site`` (``site.plugin_section(NAME)``).

    Called for every plugin in the site's stack by ``tgw check-config``, at start-up
    and on reload, before anything is built. Return every problem found (an empty
    sequence when the section is fine); never raise for bad input. Results of all
    plugins are concatenated.
    """


@hookspec
def tgw_secret_keys(site: SiteConfig) -> Sequence[str]:
    """Name the keys of this plugin's own section whose values are secrets.

    Called when the config is loaded. Their values are shown as ``<redacted>`` by the
    admin ``/config`` endpoint (and scrubbed from config errors), like the core's own
    ``token`` keys. Results apply to the implementing plugin's section only.
    """


# --- providers (called once when a site starts) ----------------------------------


@hookspec
def tgw_catalog_sources(site: SiteContext) -> Sequence[CatalogSource]:
    """Return the catalog sources this plugin provides for ``site``.

    Sources are merged in stack order: the first source that names a destination
    defines it. All results are collected.
    """


@hookspec
def tgw_certificate_providers(site: SiteContext) -> Sequence[CertificateProvider]:
    """Return certificate providers for ``site``.

    Trust roots of all providers are combined, each into the bundle of the trust
    domain it is tagged with (``TrustRoot``); a destination's leaf comes from the
    first provider (in stack order) that has one. All results are collected.
    """


@hookspec
def tgw_authorization_engines(site: SiteContext) -> Sequence[AuthorizationEngine]:
    """Return authorization engines for ``site``.

    Every engine is asked; any deny wins, all-abstain falls back to the site's
    ``default_policy``. An engine that raises, times out, or answers anything but a
    ``Decision`` (``None``, another type, a Deferred firing ``None``) is a deny by that
    engine, counted in ``tgw_authz_errors_total{reason}``. All results are collected.
    """


@hookspec
def tgw_upstream_strategies(site: SiteContext) -> Sequence[UpstreamStrategy]:
    """Return upstream strategies for ``site``.

    For each destination the first strategy in stack order whose ``applies_to`` is
    true is used; the essential ``mesh_hop``, ``tls`` and ``plain`` strategies come
    last (in that order) unless the stack names them. All results are collected.
    """


# --- events (the addon API) ------------------------------------------------------


@hookspec
def tgw_site_started(event: SiteStarted) -> None:
    """A site is listening. Called once per site start, after the first
    ``tgw_routes_changed``; ``event.address`` is ``host:port`` of its listener."""


@hookspec
def tgw_routes_changed(event: RoutesChanged) -> None:
    """A new route table went live for a site: once while the site starts (before
    ``tgw_site_started``), then after every catalog rebuild, even when the set of
    names did not change (only endpoints or intentions did). Certificate rotations
    keep the routes and do not call it."""


@hookspec
def tgw_client_connected(event: ClientConnected) -> None:
    """A TCP connection was accepted. ``event.veto(reason)`` closes it at once."""


@hookspec
def tgw_tls_clienthello(event: ClientHelloSeen) -> None:
    """The ClientHello's SNI was read and routed. A veto aborts the handshake
    without sending a certificate."""


@hookspec
def tgw_handshake_done(event: HandshakeDone) -> None:
    """The client is verified and its SPIFFE identity known. A veto closes it."""


@hookspec
def tgw_authorized(event: AuthorizationDone) -> None:
    """The engines decided (allow or deny; ``event.decision`` says which). A veto turns
    an allow into a deny; on a deny it changes nothing."""


@hookspec
def tgw_choose_endpoint(event: EndpointChoice) -> None:
    """The connection was authorized and the gateway is about to dial: ``event.candidates``
    are the usable endpoints in the order the load balancer chose. ``event.choose(eps)``
    replaces them with a selection of the candidates, in a new order (the first
    ``max_connect_attempts`` are tried). The first addon to choose wins."""


@hookspec
def tgw_upstream_connected(event: UpstreamConnected) -> None:
    """An upstream connection is open; bytes start to flow."""


@hookspec
def tgw_upstream_failed(event: UpstreamFailed) -> None:
    """A connect attempt failed; ``event.final`` is true when no attempt is left."""


@hookspec
def tgw_connection_closed(event: ConnectionClosed) -> None:
    """The connection ended; ``event.record`` is its access-log record."""


EVENT_HOOKS: tuple[str, ...] = (
    "tgw_site_started",
    "tgw_routes_changed",
    "tgw_client_connected",
    "tgw_tls_clienthello",
    "tgw_handshake_done",
    "tgw_authorized",
    "tgw_choose_endpoint",
    "tgw_upstream_connected",
    "tgw_upstream_failed",
    "tgw_connection_closed",
)

PROVIDER_HOOKS: tuple[str, ...] = (
    "tgw_catalog_sources",
    "tgw_certificate_providers",
    "tgw_authorization_engines",
    "tgw_upstream_strategies",
)

CONFIG_HOOKS: tuple[str, ...] = ("tgw_validate_site_config", "tgw_secret_keys")
