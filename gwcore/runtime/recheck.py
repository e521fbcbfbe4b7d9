"""Live connections under a policy that changed: re-authorize them or close them.

A connection is authorized once, after its handshake, against the route table, the
trust roots and the engines of that moment. Whenever one of those changes in a way
that could turn an allowed connection into a denied one, every live connection the
site answers for is checked again, at once, and closed if it no longer passes. The
close cause says which change it was:

========================  ==================================================================
``policy_revoked``         an engine (or the default policy) now denies it: an intention
                           edit, an OPA policy change, or a reload that changed the site's
                           ``default_policy``, engine stack or plugin sections
``route_removed``          its SNI is no longer routed (the service was unlinked from the
                           terminating-gateway entry, left the catalog, or its site was
                           removed by a reload)
``route_changed``          its SNI now routes to another service
``trust_root_removed``     its client certificate no longer chains to its trust domain's bundle
========================  ==================================================================

A reload that replaces a site hands the old site's live connections to the new one
(:meth:`LiveRecheck.adopt`): they are checked against the new site at once, and
again on every later change of the new site, for as long as they last. Only a
change of the fields in :data:`CANNOT_DENY` (listener tuning, timeouts, balancing,
DNS) skips the check: those connections simply drain.

An L7 connection is decided per request, not here; but a policy change also decides
again every open WebSocket tunnel on the request it was opened with, and closes the
denied ones as ``policy_revoked`` (:mod:`gwcore.runtime.l7_tunnels`). A change of
route or trust root closes an L7 connection (and its tunnel) as any other.

A decision still in flight when the policy changes (an engine answering
asynchronously) was asked of the old policy: :meth:`LiveRecheck.decide` asks again
when it arrives, so no connection is let through on a superseded answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gwcore.net.splice import State
from gwcore.policy.config import SiteConfig
from gwcore.policy.model import Decision, Verdict

if TYPE_CHECKING:
    from gwcore.contract.metrics import GatewayMetrics
    from gwcore.net.terminator import DownstreamProtocol
    from gwcore.net.tls import ServerTLS
    from gwcore.policy.routes import RouteTable
    from gwcore.runtime.l7_site import L7Step

log = Logger(namespace="tgw.recheck")


class Site(Protocol):
    """What the re-check needs of its site; :class:`gwcore.runtime.site.Site` provides it.

    An interface rather than an import, so the site owns the re-check and not the other
    way round.
    """

    name: str
    config: SiteConfig
    metrics: GatewayMetrics
    recheck: LiveRecheck
    l7: L7Step

    @property
    def active(self) -> set[DownstreamProtocol]: ...

    def authorize(self, conn: DownstreamProtocol) -> Deferred[Decision]: ...

    def current(self) -> tuple[RouteTable, ServerTLS]: ...

    def trust_bundles(self) -> Mapping[str, Sequence[Any]]: ...


CANNOT_DENY = frozenset(
    {
        "listen",
        "file",
        "base_dir",
        "handshake_timeout",
        "connect_timeout",
        "idle_timeout",
        "access_log_flush_interval",
        "access_log_no_data",
        "authz_timeout",
        "drain_timeout",
        "max_connections",
        "max_connect_attempts",
        "max_request_headers_kb",
        "request_head_timeout",
        "http_max_upstream_connections",
        "http_max_idle_upstream_connections",
        "http_upstream_idle_timeout",
        "http_max_pending_requests",
        "lb_policy",
        "health_order",
        "outlier_consecutive_failures",
        "outlier_base_ejection",
        "outlier_max_ejection",
        "dns_nameservers",
        "dns_timeout",
        "dns_min_ttl",
        "dns_max_ttl",
        "dns_max_stale",
        "dns_family",
    }
)
"""Site settings whose change can never turn an allowed connection into a denied one."""

MAX_ROUNDS = 8
"""Decisions asked again because the policy changed meanwhile, before giving up (deny)."""

NO_CHECK_TIME = 0x200000
"""OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME`` (pyOpenSSL names no constant for it)."""

_LIVE = (State.AUTHORIZING, State.CONNECTING, State.SPLICING)


def can_deny(old: SiteConfig, new: SiteConfig) -> bool:
    """Whether replacing ``old`` by ``new`` could deny a connection ``old`` allowed.

    Anything not known to be harmless counts: plugin sections may name another
    catalog, CA or policy, and a changed trust domain changes every route's SNI.
    """
    return any(
        getattr(old, f.name) != getattr(new, f.name)
        for f in fields(SiteConfig)
        if f.name not in CANNOT_DENY
    )


class LiveRecheck:
    """One site's re-checks of its live connections (and of those it adopted)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.epoch = 0
        """Rises on every change that can deny; a decision asked before it rose is stale."""
        self.successor: Site | None = None
        self._adopted: list[Site] = []
        self._bundles: Mapping[str, Sequence[Any]] | None = None
        self.retired: str | None = None
        """Why a reload removed the site, once it did."""

    # --- which connections ---------------------------------------------------------

    def live(self) -> Iterator[DownstreamProtocol]:
        """Connections past their handshake, on this site or on sites it replaced."""
        self._adopted = [s for s in self._adopted if s.active or s.recheck._adopted]
        for site in (self.site, *self._adopted):
            own = site is self.site
            for conn in list(site.active) if own else site.recheck.live():
                # A mesh site's pass-through connections have no identity: never checked.
                if conn.state in _LIVE and getattr(conn, "identity", None) is not None:
                    yield conn

    def sites(self) -> Iterator[Site]:
        """This site and, through them, the sites it replaced that still hold connections."""
        yield self.site
        for old in self._adopted:
            yield from old.recheck.sites()

    def authority(self) -> Site:
        """The site whose policy now applies: the newest one that replaced this site."""
        site = self.site
        for _ in range(64):  # a chain of reloads; bounded against a cycle
            if site.recheck.successor is None:
                break
            site = site.recheck.successor
        return site

    # --- in-flight decisions -----------------------------------------------------------

    def decide(
        self, conn: DownstreamProtocol, ask: Callable[[], Deferred[Decision]]
    ) -> Deferred[Decision]:
        """``ask()``'s decision, asked again while the policy changed under it."""
        if self.successor is None:
            epoch = self.epoch
            d = ask()
            if d.called:
                return d  # answered at once: nothing could change meanwhile
            return d.addCallback(self._arrived, conn, ask, epoch, self.site, 1)
        return self._ask(conn, ask, self.authority(), 1)

    def _ask(
        self, conn: DownstreamProtocol, ask: Callable[[], Any], site: Site, rounds: int
    ) -> Deferred[Decision]:
        epoch = site.recheck.epoch
        d = ask() if site is self.site else site.authorize(conn)
        return d.addCallback(self._arrived, conn, ask, epoch, site, rounds)

    def _arrived(
        self,
        decision: Decision,
        conn: DownstreamProtocol,
        ask: Callable[[], Any],
        epoch: int,
        site: Site,
        rounds: int,
    ) -> Any:
        authority = self.authority()
        if authority is site and authority.recheck.epoch == epoch:
            return decision
        if rounds >= MAX_ROUNDS:
            return Decision(Verdict.DENY, "recheck", "the policy kept changing")
        return self._ask(conn, ask, authority, rounds + 1)

    # --- triggers --------------------------------------------------------------------

    def policy_changed(self) -> None:
        """An engine's policy (or the site's engine configuration) changed."""
        self.epoch += 1
        if self.successor is not None:
            return  # replaced by a reload: the successor's policy is the one that applies
        for conn in list(self.live()):
            if conn.state is State.AUTHORIZING:
                continue  # its decision is in flight: decide() asks again
            self.site.authorize(conn).addCallback(self._decided, conn)
        # An L7 connection is decided per request: its WebSocket tunnels are decided
        # again on the request they opened with (runtime.l7_tunnels).
        for site in list(self.sites()):
            site.l7.tunnels.recheck_all()

    def routes_changed(self) -> None:
        """A new route table went live: close connections whose route went or moved."""
        if self.successor is None:
            self._check_routes(self.live())

    def _check_routes(
        self, conns: Iterator[DownstreamProtocol], routes: RouteTable | None = None
    ) -> None:
        if routes is None:
            routes, _ = self.site.current()
        for conn in list(conns):
            destination = routes.lookup(conn.sni) if conn.sni else None
            if destination is None:
                self.close(conn, "route_removed", f"{conn.sni} is not routed any more")
            elif conn.destination is not None and destination.service != conn.destination.service:
                self.close(
                    conn,
                    "route_changed",
                    f"{conn.sni} now routes to {destination.name}, not {conn.destination.name}",
                )

    def accepted(self, conn: DownstreamProtocol) -> bool:
        """``conn`` just finished its handshake, verified and routed against the routes
        and roots of its accept time: if either changed since (a client may hold a bare
        TCP connection open across the change), check it against those of now, as the
        re-check did for the connections already live. True: it was closed. (A live
        connection asked again after a policy change is not this check's business.)"""
        if conn.state is not State.AUTHORIZING:
            return False
        authority = self.authority()
        if authority.recheck.retired is not None:
            self.close(conn, "route_removed", authority.recheck.retired)
            return True
        routes, material = authority.current()
        if routes is not conn.routes:
            self._check_routes(iter([conn]), routes)
        identity = conn.identity
        if conn.state is State.CLOSED or material is conn.material or identity is None:
            return conn.state is State.CLOSED
        leaf = conn.tls.get_peer_certificate() if conn.tls is not None else None
        if leaf is not None:
            refused = material.trust.still_trusted(conn.material.trust, identity.trust_domain, leaf)
            if refused is not None:
                self.close(
                    conn,
                    "trust_root_removed",
                    f"its issuing root left the {identity.trust_domain} bundle "
                    f"during its handshake ({refused})",
                )
        return conn.state is State.CLOSED

    def roots_changed(self, before: Mapping[str, Sequence[Any]] | None = None) -> None:
        """Certificates changed: if a trust root left a trust domain's bundle, close
        the clients of that domain it vouched for.

        A connection is closed when its client chain verifies against its identity's
        trust domain's bundle ``before`` (default: those of the last call) and not
        against the current one (a root removed, or now configured for another
        domain); a resumed session's chain is rebuilt with the intermediates
        remembered from its full handshake. One whose chain cannot be rebuilt either
        way is not this change's business.
        """
        bundles = self.site.trust_bundles()
        if before is None:
            before = self._bundles
        self._bundles = bundles
        if self.successor is not None or before is None:
            return  # first material: nobody can be refused
        shrunk = {
            td
            for td, roots in before.items()
            if _fingerprints(roots) - _fingerprints(bundles.get(td, ()))
        }
        if not shrunk:
            return  # roots only added: nobody can be refused
        self.epoch += 1
        stores: dict[str, tuple[crypto.X509Store, crypto.X509Store]] = {}
        for conn in list(self.live()):
            identity = conn.identity
            if identity is None or identity.trust_domain not in shrunk:
                continue
            td = identity.trust_domain
            if td not in stores:
                stores[td] = (_store(before[td]), _store(bundles.get(td, ())))
            old, new = stores[td]
            if _chains(conn, old) and not _chains(conn, new):
                self.close(conn, "trust_root_removed", "its issuing root is no longer trusted")

    def adopt(self, old: Site) -> None:
        """``self.site`` replaces ``old`` (a reload): check ``old``'s connections now."""
        old.recheck.successor = self.site
        # Later changes of this site re-check them too, for as long as they last.
        self._adopted.append(old)
        if not can_deny(old.config, self.site.config):
            return  # listener tuning only: the old connections drain
        old.recheck.epoch += 1  # decisions in flight on the old site are stale
        self._check_routes(old.recheck.live())
        self.roots_changed(before=old.trust_bundles())
        self.policy_changed()

    def retire(self, reason: str) -> None:
        """The site is removed by a reload: its routes are gone with it (also for the
        connections still in their handshake: :meth:`accepted`)."""
        self.retired = reason
        for conn in list(self.live()):
            self.close(conn, "route_removed", reason)

    # --- closing -----------------------------------------------------------------------

    def _decided(self, decision: Decision, conn: DownstreamProtocol) -> None:
        if decision.verdict is Verdict.ALLOW or conn.state is State.CLOSED:
            return
        conn.decision = decision
        self.close(conn, "policy_revoked", f"{decision.engine}: {decision.reason}")

    def close(self, conn: DownstreamProtocol, cause: str, detail: str) -> None:
        if conn.state is State.CLOSED:
            return
        site = self.site  # an adopted connection's site has the same name
        log.info(
            "closing {source} -> {destination} on site {site}: {cause} ({detail})",
            source=conn.identity,
            destination=conn.destination.name if conn.destination else "?",
            site=site.name,
            cause=cause,
            detail=detail,
        )
        site.metrics.rejected.labels(site=site.name, reason=cause).inc()
        conn.close_cause_detail = detail
        conn.close(cause)


def _fingerprints(roots: Sequence[Any]) -> frozenset[bytes]:
    return frozenset(r.fingerprint(hashes.SHA256()) for r in roots)


def _store(roots: Sequence[Any]) -> crypto.X509Store:
    store = crypto.X509Store()
    for root in roots:
        store.add_cert(crypto.X509.from_cryptography(root))
    # Expiry during a connection is not what this check is about.
    store.set_flags(NO_CHECK_TIME)
    return store


def _chains(conn: DownstreamProtocol, store: crypto.X509Store) -> bool:
    """Whether the client certificate of ``conn`` verifies against ``store``."""
    tls = conn.tls
    if tls is None:
        return True
    leaf = tls.get_peer_certificate()
    if leaf is None:
        return True  # nothing was verified by a certificate: nothing to revoke here
    # On a server the peer chain holds the intermediates, without the leaf; a resumed
    # session's holds none, so add those remembered when the leaf was first verified.
    chain = [
        c for c in tls.get_peer_cert_chain() or () if c.digest("sha256") != leaf.digest("sha256")
    ]
    chain += conn.material.trust.intermediates(leaf)
    try:
        crypto.X509StoreContext(store, leaf, chain).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True
