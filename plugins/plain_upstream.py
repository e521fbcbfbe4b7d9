"""Essential plugin: plain TCP to destinations that do not ask for TLS origination.

Registered after every site's stack, so any strategy a stack names is preferred.
"""

from __future__ import annotations

from collections.abc import Sequence

from gwcore.hookspecs import hookimpl
from gwcore.net.upstream import PlainTCPStrategy
from gwcore.providers import SiteContext, UpstreamStrategy

NAME = "plain_upstream"


@hookimpl(trylast=True)
def tgw_upstream_strategies(site: SiteContext) -> Sequence[UpstreamStrategy]:
    return [PlainTCPStrategy(site.reactor)]
