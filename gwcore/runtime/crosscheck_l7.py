"""``tgw check-config`` cross-checks of the L7 catalog inputs (a ``file_catalog`` site).

Warnings, like every cross-check (:mod:`gwcore.runtime.crosscheck`):

- an intention with ``Permissions`` whose destination is served at L4 — its protocol is
  not HTTP-like (Consul refuses to write such an entry, with the words used here), or it
  is a ``service-defaults`` ``Destination``: tgw denies every connection such a source
  matches, as Consul's gateway would;
- a ``service-defaults`` ``Destination`` whose protocol is HTTP-like: tgw serves
  ``destination.`` routes at L4 (:func:`gwcore.policy.routes.serves_l7`), so its
  requests are not inspected one by one;
- a ``proxy-defaults`` ``Config.protocol`` Consul's gateway does not serve at L7 and
  tcp does not name (``"mongo"``): served as ``tcp``.
"""

from __future__ import annotations

from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.consul_shapes import PROTOCOLS, WILDCARD, CatalogDocuments, protocols_of
from gwcore.policy.http_facts import is_l7
from gwcore.policy.model import Destination


def l7_catalog_warnings(
    site: SiteConfig, docs: CatalogDocuments, destinations: tuple[Destination, ...]
) -> list[ConfigProblem]:
    """Every L7 cross-check of one site's catalog documents."""
    key = f"{site.prefix}.file_catalog.paths"
    found: list[str] = []
    protocol = protocols_of(docs)
    routed = {d.service for d in destinations}
    # A linked name with a Destination and no registered instance is a destination.
    registered = {r.service.service for r in docs.registrations if r.service is not None}
    egress = {
        sd.service: sd
        for sd in docs.service_defaults
        if sd.destination is not None and sd.service in routed and sd.service not in registered
    }
    for entry in docs.intentions:
        name = entry.destination
        if name.name == WILDCARD or name not in routed:
            continue
        if not any(i.permissions for i in entry.intentions):
            continue
        if name in egress:
            found.append(
                f"{entry.origin}: service {str(name)!r} is a service-defaults Destination, "
                "served at L4 (Consul supports no L7 intentions for destinations): every "
                "connection its L7 sources match is denied"
            )
        elif not is_l7(protocol(name)):
            # Consul's validateProposedConfigEntryInServiceGraph, word for word.
            found.append(
                f'{entry.origin}: service "{name}" has protocol "{protocol(name)}", which is '
                "incompatible with L7 intentions permissions (Consul refuses this entry; "
                "tgw denies every connection its L7 sources match)"
            )
    for name, sd in sorted(egress.items(), key=lambda item: str(item[0])):
        if is_l7(sd.protocol):
            found.append(
                f"{sd.origin}: service-defaults {str(name)!r} is a Destination with protocol "
                f"{sd.protocol!r}: tgw serves destinations at L4 (Consul supports no L7 "
                "intentions for destinations), so its requests are not inspected"
            )
    for pd in docs.proxy_defaults:
        if pd.declared and pd.declared not in PROTOCOLS:
            found.append(
                f"{pd.origin}: proxy-defaults Config.protocol {pd.declared!r} is not one of "
                f"{', '.join(PROTOCOLS)}: served as tcp, as Consul's gateway serves a "
                "protocol that is not HTTP-like"
            )
    return [ConfigProblem(site.file, key, message) for message in found]
