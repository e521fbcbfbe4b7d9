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

**HTTP addon hooks** — part of the event hooks, called per request at an L7 (http,
http2, grpc) destination with one mutable :class:`~gwcore.contract.http_flow.HttpFlow`
named ``flow``, only after the engines allowed the request. Unlike the other event
hooks they fail closed: see :mod:`gwcore.contract.http_addons`.

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
    from gwcore.contract.http_flow import HttpFlow
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
    ``max_connect_attempts`` are tried). The first addon to choose wins. At an ``http``
    destination (L7, HTTP/1.1) it is called for each request, before the request takes
    an idle connection to the first endpoint or dials."""


@hookspec
def tgw_upstream_connected(event: UpstreamConnected) -> None:
    """An upstream connection is open; bytes start to flow."""


@hookspec
def tgw_upstream_failed(event: UpstreamFailed) -> None:
    """A connect attempt failed; ``event.final`` is true when no attempt is left."""


@hookspec
def tgw_connection_closed(event: ConnectionClosed) -> None:
    """The connection ended; ``event.record`` is its access-log record."""


# --- HTTP addon hooks (per request, at L7 destinations) -------------------------


@hookspec
def tgw_http_requestheaders(flow: HttpFlow) -> None:
    """The request head was read and the engines **allowed** the request; its body is
    not read yet. Called first of the five HTTP hooks, once per request.

    ``flow.request`` is the request the upstream will receive (method, the normalised
    ``path`` with its query, ``authority``, ``headers``): change it in place (add, set
    or remove headers, rewrite ``path``). ``flow.source``, ``flow.destination`` and
    ``flow.decision`` are facts; an addon answers or changes a request, it never
    decides instead of the engines (a denied request never reaches the addons).

    ``flow.respond(status, body, headers)`` answers here: the request never reaches
    the upstream, later addons' request hooks are not called, ``tgw_http_response`` is
    (``tgw_http_responseheaders`` is not), and the request's access-log record names
    the addon in ``answered_by``. An addon that raises fails the request closed: the
    client gets ``500``, nothing is forwarded, the error is logged and counted in
    ``tgw_addon_errors_total{site,hook}``."""


@hookspec
def tgw_http_request(flow: HttpFlow) -> None:
    """The whole request was read (after ``tgw_http_requestheaders``), before its end
    goes upstream. Bodies are streamed, so the upstream already has the head and the
    body (``flow.request.body`` is ``None``); ``flow.request.trailers`` may still
    change. ``flow.respond(...)`` answers the client instead of the upstream, whose
    stream is cancelled (a chunked request never completes there; one framed by
    Content-Length already has every byte). Raising fails the request closed the same
    way, with ``500``. Not called after an answer in ``tgw_http_requestheaders``."""


@hookspec
def tgw_http_responseheaders(flow: HttpFlow) -> None:
    """The upstream's response head arrived (``flow.response``: status and headers,
    body not read). Change ``flow.response.status`` or its headers in place; the
    client receives them. Not called for a response an addon made with
    ``respond()``. An addon that raises fails the response closed: the client gets
    ``502`` instead of what the upstream sent, and the error is counted."""


@hookspec
def tgw_http_response(flow: HttpFlow) -> None:
    """The response is complete: from the upstream, or made by an addon's
    ``respond()`` (then ``flow.answered_by`` names it; ``tgw`` for the gateway's
    fail-closed answer). The head has already gone to
    the client, so this hook observes (and may write ``metadata`` or annotations);
    raising is logged and counted, nothing else."""


@hookspec
def tgw_http_error(flow: HttpFlow) -> None:
    """The exchange failed instead of completing: ``flow.error`` says why (no healthy
    endpoint, connect failure, upstream reset or timeout, client gone). Called once,
    instead of ``tgw_http_response``; ``flow.response`` is the error response the
    client got, if any. Raising is logged and counted, nothing else."""


HTTP_HOOKS: tuple[str, ...] = (
    "tgw_http_requestheaders",
    "tgw_http_request",
    "tgw_http_responseheaders",
    "tgw_http_response",
    "tgw_http_error",
)
"""The per-request hooks, in the order of a request's life; their one argument is the
:class:`~gwcore.contract.http_flow.HttpFlow`, named ``flow``."""

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
    *HTTP_HOOKS,
)

PROVIDER_HOOKS: tuple[str, ...] = (
    "tgw_catalog_sources",
    "tgw_certificate_providers",
    "tgw_authorization_engines",
    "tgw_upstream_strategies",
)

CONFIG_HOOKS: tuple[str, ...] = ("tgw_validate_site_config", "tgw_secret_keys")
