"""The ``file_catalog`` built-in plugin: a catalog read from Consul-shaped JSON files.

Section ``[sites.NAME.file_catalog]``:

- ``paths`` (required): files or directories (whose ``*.json`` and ``*.hcl`` files are
  read), relative to the config file's directory. An ``.hcl`` file holds one config
  entry in Consul's HCL (:mod:`gwcore.policy.hcl_entries`);
- ``poll_interval`` (default ``1s``, at least ``0.05s``): how often the files are checked.

Each file holds Consul documents (see :mod:`gwcore.policy.consul_shapes`). The source is
authoritative for intentions: its snapshots always carry an intentions tuple. A linked
service's protocol is its ``service-defaults`` ``Protocol``, else the ``proxy-defaults``
``Config.protocol``, else ``tcp``; the ``mesh`` entry's ``HTTP`` options become the
snapshot's ``mesh_http``.

Multi-datacenter: registrations may carry ``Datacenter`` (as Consul's ``?dc=`` answers
do). For a terminating site the destinations are the linked services of the
``terminating-gateway`` entry named like the site; one registered only in another
datacenter is a destination there (reached by the mesh-gateway hop). For a mesh site
(``role = "mesh"``) the destinations are every service of the site's datacenter with
Connect endpoints (terminating gateway instances linking it, sidecar proxies). Both
roles publish the mesh gateways of every datacenter (``Kind: "mesh-gateway"``).

Failure rules: a file that cannot be read, decoded or validated is reported once (one
log line, ``tgw_catalog_errors_total``, :meth:`FileCatalogSource.health`) and its last
good content stays in force, on the first start too; other files still apply. A deleted
file's content is removed. ``tgw check-config`` reports every bad file, so there a bad
file does block the start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import SourceHealth
from gwcore.net.filewatch import FileWatcher, expand
from gwcore.policy.config import ConfigProblem, SiteConfig
from gwcore.policy.consul_shapes import (
    EMPTY_DOCUMENTS,
    CatalogDocuments,
    ShapeProblem,
    build_destinations,
    build_intentions,
    build_mesh_destinations,
    build_mesh_gateways,
    build_mesh_http,
    merge_documents,
)
from gwcore.policy.destinations import apply_destinations
from gwcore.policy.hcl_entries import decode_hcl
from gwcore.policy.http_facts import MeshHttp
from gwcore.policy.model import CatalogSnapshot, Destination, Intention, MeshGateways
from gwcore.policy.resolver_entry import (
    ResolverEntry,
    apply_settings,
    decode_with_resolvers,
    merge_resolvers,
)
from gwcore.policy.subsets import apply_subsets
from gwcore.policy.wanfed import build_consul_servers

if TYPE_CHECKING:
    from gwcore.contract.providers import CatalogSource, SiteContext

NAME = "file_catalog"
PATTERN = ("*.json", "*.hcl")
DEFAULT_POLL_INTERVAL = 1.0
MIN_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class FileCatalogSettings:
    """The plugin's section, read. ``paths`` are as written (possibly relative)."""

    paths: tuple[str, ...]
    poll_interval: float


def read_settings(site: SiteConfig) -> tuple[FileCatalogSettings, list[ConfigProblem]]:
    """Read ``[sites.NAME.file_catalog]``; problems for bad or unknown keys (no file I/O)."""
    reader = site.reader(NAME)
    paths = reader.strings("paths", required=True)
    if "paths" in reader.table and not paths and not reader.problems:
        reader.problem("paths", "must name at least one file or directory")
    interval = reader.duration("poll_interval", DEFAULT_POLL_INTERVAL, minimum=MIN_POLL_INTERVAL)
    return FileCatalogSettings(paths, interval), reader.finish()


def read_catalog_file(
    path: Path,
) -> tuple[CatalogDocuments, tuple[ResolverEntry, ...], list[ShapeProblem]]:
    """Read and parse one catalog file; an unreadable file is a problem, not an exception."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return (
            EMPTY_DOCUMENTS,
            (),
            [ShapeProblem(str(path), "(file)", f"cannot be read: {e.strerror or e}")],
        )
    return decode_catalog_file(path, data)


def decode_catalog_file(
    path: Path, data: bytes, origin: str | None = None
) -> tuple[CatalogDocuments, tuple[ResolverEntry, ...], list[ShapeProblem]]:
    """A ``.json`` file's documents, or an ``.hcl`` file's config entry (Consul's HCL);
    ``origin`` names the file in problems and decisions (default: its path)."""
    name = str(path) if origin is None else origin
    if path.suffix == ".hcl":
        converted, problem = decode_hcl(name, data)
        if converted is None:
            return EMPTY_DOCUMENTS, (), [problem] if problem else []
        data = converted
    return decode_with_resolvers(name, data)


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> list[ConfigProblem]:
    """Check the section, that every path exists, and every catalog file in them."""
    if NAME not in site.plugins:
        return []
    settings, problems = read_settings(site)
    key = f"{site.prefix}.{NAME}.paths"
    existing: list[Path] = []
    for raw in settings.paths:
        path = site.base_dir / raw
        if path.exists():
            existing.append(path)
        else:
            problems.append(ConfigProblem(site.file, key, f"{str(path)!r} does not exist"))
    shape_problems: list[ShapeProblem] = []
    parts: list[CatalogDocuments] = []
    resolver_groups: list[tuple[ResolverEntry, ...]] = []
    for path in expand(existing, PATTERN):
        docs, resolvers, found = read_catalog_file(path)
        shape_problems += found
        parts.append(docs)
        resolver_groups.append(resolvers)
    merged, conflicts = merge_documents(parts)
    conflicts += merge_resolvers(resolver_groups)[1]
    unusable: list[ShapeProblem] = []
    if site.role != "mesh":
        _, unusable = build_destinations(merged, site.name, site.datacenter)
    for problem in [*shape_problems, *conflicts, *unusable]:
        problems.append(ConfigProblem(site.file, key, str(problem)))
    return problems


@hookimpl
def tgw_catalog_sources(site: SiteContext) -> list[CatalogSource]:
    """One :class:`FileCatalogSource` when the site's stack names ``file_catalog``."""
    if NAME not in site.config.plugins:
        return []
    return [FileCatalogSource(site)]


@dataclass(frozen=True, slots=True)
class _FileState:
    digest: str  # of the bytes last read, good or bad
    documents: CatalogDocuments  # the last good content (empty if never good)
    error: str | None  # why the current bytes were rejected
    resolvers: tuple[ResolverEntry, ...] = ()  # service-resolver entries (mesh sites use them)


def _content_version(
    destinations: tuple[Destination, ...],
    intentions: tuple[Intention, ...],
    gateways: tuple[MeshGateways, ...] = (),
    mesh_http: MeshHttp | None = None,
) -> str:
    # Everything in a snapshot is a frozen dataclass whose repr is deterministic (meta
    # mappings are sorted when read), so the repr is a faithful fingerprint of content.
    content: tuple[object, ...] = (destinations, intentions)
    if gateways:
        content += (gateways,)
    if mesh_http is not None:
        content += (mesh_http,)
    return hashlib.sha256(repr(content).encode()).hexdigest()[:16]


class FileCatalogSource:
    """A :class:`~gwcore.contract.providers.CatalogSource` reading Consul-shaped JSON files.

    :meth:`start` reads every file, publishes the first snapshot synchronously and
    starts polling; after a change it re-reads and publishes only if the built content
    changed. Per-file last-good semantics are described in the module docstring.
    """

    name = NAME

    def __init__(self, site: SiteContext) -> None:
        self._site = site
        settings, _ = read_settings(site.config)  # validated before the site starts
        self._paths = [site.resolve_path(p) for p in settings.paths]
        self._gateway = site.config.name
        self._datacenter = site.config.datacenter
        self._mesh_role = site.config.role == "mesh"
        self._files: dict[Path, _FileState] = {}
        self._unresolved: dict[str, str] = {}  # problem key -> text, most recent last
        self._version: str | None = None
        self._last_success: float | None = None
        self._publish: Callable[[CatalogSnapshot], None] | None = None
        self._watcher = FileWatcher(
            site.reactor,
            self._paths,
            self.reload,
            interval=settings.poll_interval,
            pattern=PATTERN,
            on_unchanged=self._checked,
        )
        labels = {"site": site.name, "source": NAME}
        self._skipped_seen: set[str] = set()
        self._skipped = site.metrics.family(
            Gauge,
            "tgw_catalog_skipped_entries",
            "Config entries of kinds tgw does not use (service-router, exported-services, ...), "
            "left out on purpose, by kind.",
            ["site", "source", "kind"],
        )
        self._skipped_kinds: set[str] = set()
        self._errors = site.metrics.catalog_errors.labels(**labels)
        self._last_success_gauge = site.metrics.catalog_last_success.labels(**labels)

    def start(self, publish: Callable[[CatalogSnapshot], None]) -> None:
        """Publish the first snapshot (synchronously), then watch the files."""
        self._publish = publish
        # Watch first: a change made while the files are being read is then seen later.
        self._watcher.start()
        try:
            self.reload()
        except Exception:
            self._watcher.stop()
            raise

    def stop(self) -> None:
        self._watcher.stop()

    def health(self) -> SourceHealth:
        """``last_error`` is the most recently reported problem that is still unresolved."""
        last_error = next(reversed(self._unresolved.values()), None)
        return SourceHealth(self._last_success, last_error)

    def reload(self) -> None:
        """Re-read changed files, rebuild, and publish if the content changed."""
        self._read_files()
        merged, conflicts = merge_documents(
            self._files[path].documents for path in sorted(self._files)
        )
        resolvers, unusable = merge_resolvers(self._files[p].resolvers for p in sorted(self._files))
        if self._mesh_role:
            built = build_mesh_destinations(merged, self._datacenter)
        else:
            built, unbuilt = build_destinations(merged, self._gateway, self._datacenter)
            built, egress_problems = apply_destinations(built, merged, self._gateway)
            unusable += unbuilt + egress_problems
        # service-resolver subsets: mesh sites route subset SNIs to them; terminating
        # sites serve one route per subset (gwcore.policy.routes)
        destinations, bad_subsets = apply_subsets(built, merged, resolvers, self._datacenter)
        destinations = apply_settings(destinations, resolvers)
        unusable += bad_subsets
        if self._mesh_role:
            servers = build_consul_servers(merged, self._datacenter)  # WAN federation
            destinations += (servers,) if servers is not None else ()
        self._note_catalog_problems([*conflicts, *unusable])
        self._note_skipped(merged)
        intentions = build_intentions(merged)
        gateways = build_mesh_gateways(merged, self._datacenter)
        mesh_http = build_mesh_http(merged)
        version = _content_version(destinations, intentions, gateways, mesh_http)
        if version != self._version and self._publish is not None:
            self._publish(
                CatalogSnapshot(
                    source=NAME,
                    destinations=destinations,
                    intentions=intentions,
                    version=version,
                    mesh_gateways=gateways,
                    mesh_http=mesh_http,
                )
            )
            self._version = version
        # "Last success" means every file is in force as written: while one is
        # rejected the catalog is partly stale, and the gauge shows since when.
        if not self._unresolved:
            self._last_success = self._site.reactor.seconds()
            self._last_success_gauge.set(self._last_success)

    def _read_files(self) -> None:
        present: set[Path] = set()
        for path in expand(self._paths, PATTERN):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # gone (or never there): its content is dropped below
            except OSError as e:
                present.add(path)
                self._reject(path, f"{path}: cannot be read: {e.strerror or e}", digest="")
                continue
            present.add(path)
            digest = hashlib.sha256(data).hexdigest()
            state = self._files.get(path)
            if state is not None and state.digest == digest:
                continue
            # Decisions and problems name the file relative to the config (access-log
            # reasons carry no absolute paths); a file outside its directory by name.
            docs, resolvers, problems = decode_catalog_file(path, data, self._origin(path))
            if problems:
                self._reject(path, "; ".join(str(p) for p in problems), digest)
                continue
            if state is not None and state.error is not None:
                self._site.log.info("catalog file {path} is valid again", path=str(path))
            self._files[path] = _FileState(digest, docs, None, resolvers)
            self._unresolved.pop(f"file:{path}", None)
        for path in set(self._files) - present:
            del self._files[path]
            self._unresolved.pop(f"file:{path}", None)

    def _checked(self) -> None:
        """A poll found the files unchanged: the catalog in force is confirmed now, so
        its freshness moves (an alert on its age must not fire on a quiet catalog)."""
        if not self._unresolved:
            self._last_success = self._site.reactor.seconds()
            self._last_success_gauge.set(self._last_success)

    def _origin(self, path: Path) -> str:
        base = getattr(self._site.config, "base_dir", None)  # a test double may have none
        if base is None:
            return str(path)
        try:
            return str(path.relative_to(base))
        except ValueError:
            return path.name

    def _note_skipped(self, merged: CatalogDocuments) -> None:
        """One info line per skipped entry (once), and the count in force by kind."""
        counts: dict[str, int] = {}
        for entry in merged.skipped:
            counts[entry.kind] = counts.get(entry.kind, 0) + 1
            if str(entry) not in self._skipped_seen:
                self._skipped_seen.add(str(entry))
                self._site.log.info("{entry}", entry=str(entry))
        for kind in self._skipped_kinds | set(counts):
            self._skipped.labels(site=self._site.name, source=NAME, kind=kind).set(
                counts.get(kind, 0)
            )
        self._skipped_kinds |= set(counts)

    def _reject(self, path: Path, text: str, digest: str) -> None:
        state = self._files.get(path)
        if state is not None and state.error == text and state.digest == digest:
            return  # already reported
        kept = state.documents if state is not None else EMPTY_DOCUMENTS
        resolvers = state.resolvers if state is not None else ()
        self._files[path] = _FileState(digest, kept, text, resolvers)
        self._report(f"file:{path}", text, "catalog file rejected, its last good content stays")

    def _note_catalog_problems(self, problems: Sequence[ShapeProblem]) -> None:
        current = {f"catalog:{p}": str(p) for p in problems}
        for key in [k for k in self._unresolved if k.startswith("catalog:")]:
            if key not in current:
                del self._unresolved[key]
        for key, text in current.items():
            if key not in self._unresolved:
                self._report(key, text, "catalog documents left out")

    def _report(self, key: str, text: str, what: str) -> None:
        self._unresolved.pop(key, None)
        self._unresolved[key] = text
        self._errors.inc()
        self._site.log.error("{what}: {problem}", what=what, problem=text)
