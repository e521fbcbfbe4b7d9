"""Cross-checks between the config, the catalog and the certificates (``tgw check-config``).

Each finding is a *warning*: a :class:`ConfigProblem` naming the config file and the
key whose files hold the mistake, with the catalog document and JSON location in the
message. They do not stop a start (``tgw check-config --strict`` makes them errors).
Only what can be read without the network is checked: the ``file_catalog`` documents
and certificate files on disk (a ``consul_catalog`` or ``dns_catalog`` site is
summarised as "from the catalog at run time").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from gwcore.contract import pki
from gwcore.net.filewatch import expand
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.consul_shapes import (
    CatalogDocuments,
    build_destinations,
    merge_documents,
)
from gwcore.policy.model import Destination
from gwcore.policy.spiffe import IdentityError, parse_spiffe_id
from gwcore.runtime.crosscheck_l7 import l7_catalog_warnings
from gwcore.runtime.upstream_files import destination_file_problems


@dataclass
class SiteFindings:
    """What the cross-checks learnt about one site: warnings and, if known, its destinations."""

    warnings: list[ConfigProblem] = field(default_factory=list)
    destinations: tuple[Destination, ...] | None = None  # None: only known at run time
    unrouted: list[tuple[str, ConfigProblem]] = field(default_factory=list)
    """Intentions for a destination this site does not route; a warning only if no other
    site routes it either (see :func:`unrouted_warnings`)."""


def closest(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, else ``""``."""
    match = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def file_catalog_documents(site: SiteConfig) -> CatalogDocuments | None:
    """The site's ``file_catalog`` documents merged (``None`` if it has no file catalog)."""
    if "file_catalog" not in site.plugins:
        return None
    from gwcore.plugins.file_catalog import PATTERN, read_catalog_file, read_settings

    settings, _ = read_settings(site)
    paths = [site.base_dir / p for p in settings.paths if (site.base_dir / p).exists()]
    parts = [read_catalog_file(path)[0] for path in expand(paths, PATTERN)]
    return merge_documents(parts)[0]


def check_site(site: SiteConfig) -> SiteFindings:
    """Every cross-check for one site."""
    findings = SiteFindings()
    docs = file_catalog_documents(site)
    if docs is not None and site.role != "mesh":
        findings.destinations = build_destinations(docs, site.name, site.datacenter)[0]
        findings.warnings += _catalog_warnings(site, docs)
        findings.unrouted = _unrouted_intentions(site, docs, findings.destinations)
        findings.warnings += _upstream_file_warnings(site, findings.destinations)
        findings.warnings += l7_catalog_warnings(site, docs, findings.destinations)
    findings.warnings += _file_certs_warnings(site)
    return findings


def _catalog_warnings(site: SiteConfig, docs: CatalogDocuments) -> list[ConfigProblem]:
    key = f"{site.prefix}.file_catalog.paths"
    warnings: list[ConfigProblem] = []
    registered = {r.service.service.name for r in docs.registrations if r.service is not None}
    entry = next((g for g in docs.gateways if g.name == site.name), None)
    if entry is None:
        names = [g.name for g in docs.gateways]
        warnings.append(
            ConfigProblem(
                site.file,
                key,
                f"no terminating-gateway entry is named {site.name!r} (the site's name), "
                f"so the site routes nothing{closest(site.name, names)}",
            )
        )
    else:
        for linked in entry.services:
            if linked.name != "*" and linked.name not in registered:
                warnings.append(
                    ConfigProblem(
                        site.file,
                        key,
                        f"{entry.origin}: {linked.where}: linked service {linked.name!r} has no "
                        f"registered instance{closest(linked.name, registered)}",
                    )
                )
    linked_names = {ls.name for g in docs.gateways for ls in g.services}
    for reg in docs.registrations:
        svc = reg.service
        if svc is None or not svc.typical or svc.connect or "*" in linked_names:
            continue
        if svc.service.name not in linked_names:
            warnings.append(
                ConfigProblem(
                    site.file,
                    key,
                    f"{reg.origin}: registered service {svc.service.name!r} is linked by no "
                    f"terminating gateway",
                )
            )
    # Sources are mesh services; check them only when the catalog registers mesh services
    # at all (sidecars, Connect-native), else every source would look unknown.
    mesh = {
        r.service.proxy_destination or r.service.service.name
        for r in docs.registrations
        if r.service is not None and (r.service.connect or r.service.kind == "connect-proxy")
    }
    for entry_ in docs.intentions:
        destination = entry_.destination.name
        for intention in entry_.intentions:
            source = intention.source.name
            if mesh and source != "*" and source not in mesh | registered:
                warnings.append(
                    ConfigProblem(
                        site.file,
                        key,
                        f"{entry_.origin}: intention source {source!r} (to {destination!r}) is "
                        f"not a registered service{closest(source, mesh | registered)}",
                    )
                )
    return warnings


def _unrouted_intentions(
    site: SiteConfig, docs: CatalogDocuments, destinations: tuple[Destination, ...]
) -> list[tuple[str, ConfigProblem]]:
    key = f"{site.prefix}.file_catalog.paths"
    routed = {d.name for d in destinations}
    found = []
    for entry in docs.intentions:
        name = entry.destination.name
        if name != "*" and name not in routed:
            message = (
                f"{entry.origin}: intentions for {name!r}, which this site does not route"
                f"{closest(name, routed)}"
            )
            found.append((name, ConfigProblem(site.file, key, message)))
    return found


def unrouted_warnings(findings: Iterable[SiteFindings]) -> list[ConfigProblem]:
    """Intentions whose destination no site of the file routes."""
    every = list(findings)
    routed = {d.name for f in every for d in (f.destinations or ())}
    return [p for f in every for name, p in f.unrouted if name not in routed]


def _upstream_file_warnings(
    site: SiteConfig, destinations: tuple[Destination, ...]
) -> list[ConfigProblem]:
    """Linked services' CAFile/CertFile/KeyFile: readable, parsed, the key matching."""
    key = f"{site.prefix}.file_catalog.paths"
    report = destination_file_problems(destinations, site.base_dir)
    return [
        ConfigProblem(site.file, key, f"linked service {name!r}: {problem}")
        for name, problems in report.items()
        for problem in problems
    ]


def _file_certs_warnings(site: SiteConfig) -> list[ConfigProblem]:
    """A ``file_certs`` leaf must carry the SPIFFE ID of the service it is configured for,
    in one of the site's trust domains (a gateway presenting it would be refused)."""
    if "file_certs" not in site.plugins:
        return []
    from gwcore.plugins.file_certs import CertificateFileError, load_leaf_files, read_settings

    settings, _ = read_settings(site)
    warnings = []
    for leaf_files in settings.leaves:
        dotted = f"{site.prefix}.file_certs.leaves.{leaf_files.key}.cert"
        try:
            leaf = load_leaf_files(
                site.base_dir / leaf_files.cert, site.base_dir / leaf_files.key_file
            )
        except CertificateFileError:
            continue  # reported as an error by the plugin's own validation
        ids = []
        for uri in pki.uri_sans(leaf.chain[0]):
            try:
                ids.append(parse_spiffe_id(uri))
            except IdentityError:
                continue
        want = leaf_files.service
        if not any(i.name == want.name and i.namespace == want.namespace for i in ids):
            shown = ", ".join(pki.uri_sans(leaf.chain[0])) or "none"
            warnings.append(
                ConfigProblem(
                    site.file,
                    dotted,
                    f"{leaf_files.cert}: the leaf's SPIFFE ID is not service {str(want)!r} "
                    f"(URI SANs: {shown})",
                )
            )
        elif not any(i.trust_domain in site.trusted_domains for i in ids):
            warnings.append(
                ConfigProblem(
                    site.file,
                    dotted,
                    f"{leaf_files.cert}: the leaf is not in the site's trust domain "
                    f"{site.trust_domain} (URI SANs: {', '.join(i.uri for i in ids)})",
                )
            )
    return warnings
