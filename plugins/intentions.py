"""The ``intentions`` authorization engine: Consul service-intentions, evaluated locally.

Intentions come from the site's catalog sources (the file catalog reads
``service-intentions`` config entries; a Consul source would read
``/v1/connect/intentions/match``), so there is one precedence engine whatever the
source. At an L7 destination each request is decided on its own
(``AuthzRequest.http``), with the policy in force at that request. No matching
intention means *abstain*: the site's ``default_policy`` then
decides, as Consul's default intention policy does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import AuthorizationEngine, AuthzRequest, CatalogView, SiteContext
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.intentions import ENGINE, IntentionSet
from gwcore.policy.model import Decision, Verdict

NAME = "intentions"


class IntentionsEngine:
    """Decides from the intentions in the site's merged catalog."""

    name = NAME

    def __init__(self, site: SiteContext) -> None:
        self._site = site
        self._set = IntentionSet(site.catalog_view().intentions)
        self._changed: Callable[[], None] | None = None
        site.subscribe_catalog(self._on_catalog)

    @property
    def policy_version(self) -> str:
        return self._set.version

    def _on_catalog(self, view: CatalogView) -> None:
        fresh = IntentionSet(view.intentions)
        if fresh.version == self._set.version:
            return
        self._set = fresh
        if self._changed is not None:
            self._changed()

    def start(self, changed: Callable[[], None]) -> None:
        self._changed = changed

    def stop(self) -> None:
        self._changed = None

    def authorize(self, request: AuthzRequest) -> Decision:
        source = request.source
        local = self._site.config.trust_domain
        if source.trust_domain != local:
            # Intention sources name services of this trust domain; a peer's "web" is
            # not our "web" (Consul names peers explicitly, with Peer sources).
            return Decision(
                Verdict.ABSTAIN,
                ENGINE,
                f"source {source.uri} is from trust domain {source.trust_domain}, "
                f"not {local}: no local intention matches it",
            )
        # request.http is set per request at L7 destinations; None (L4) keeps the rule
        # that an L7 intention denies a connection.
        return self._set.decide(source.service, request.destination.service, request.http)


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    if NAME not in site.plugins:
        return []
    return site.reader(NAME).finish()


@hookimpl
def tgw_authorization_engines(site: SiteContext) -> Sequence[AuthorizationEngine]:
    if NAME not in site.config.plugins:
        return []
    return [IntentionsEngine(site)]
