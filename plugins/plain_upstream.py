"""Essential plugin: plain TCP to destinations that do not ask for TLS origination.

Registered after every site's stack, so any strategy a stack names is preferred.
"""

from __future__ import annotations

from collections.abc import Sequence

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import SiteContext, UpstreamStrategy
from gwcore.net.upstream import PlainTCPStrategy

NAME = "plain_upstream"


@hookimpl(trylast=True)
def tgw_upstream_strategies(site: SiteContext) -> Sequence[UpstreamStrategy]:
    return [PlainTCPStrategy(site.reactor)]
