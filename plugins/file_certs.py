"""The ``file_certs`` plugin: trust roots and leaves from PEM files, re-read when they change.

For certificates managed outside tgw (cert-manager, Vault agent, a cron job). Files
are polled (see :class:`~gwcore.net.filewatch.FileWatcher`), so in-place writes and
atomic renames are both noticed. A file that is unreadable, unparsable or whose
key does not match its certificate never replaces good material: the previous
certificate stays in use, the problem is logged once, counted in
``tgw_certificate_errors_total`` and shown in the provider's health until fixed.

Config in ``[sites.NAME.file_certs]`` (paths relative to the config file)::

    roots = ["roots.pem"]          # the site's own trust domain's roots (several per file)
    poll_interval = "1s"

    [sites.NAME.file_certs.trust_bundles]   # a peer's roots, by trust domain
    "peer.consul" = ["peer-root.pem"]       # the domain must be in extra_trust_domains

    [sites.NAME.file_certs.leaves]
    billing = { cert = "billing.pem", key = "billing-key.pem" }   # cert may hold the chain

A leaf's key is a service name: ``name``, ``namespace/name`` or
``partition/namespace/name``.

A root vouches only for the trust domain it is listed under, whatever it says itself
(so a peer's root without a ``spiffe://`` URI SAN cannot mint local identities); a
root whose ``spiffe://`` URI SAN names another trust domain than the one it is
listed under is refused, naming the file and key (start fails, a reload keeps the
previous material).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gwcore.contract import pki
from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import LeafCertificate, SourceHealth, TrustRoot
from gwcore.net.client_trust import misconfigured
from gwcore.net.filewatch import FileWatcher
from gwcore.policy.config import ConfigProblem, SectionReader, SiteConfig
from gwcore.policy.model import ServiceName

if TYPE_CHECKING:
    from gwcore.contract.providers import CertificateProvider, SiteContext

NAME = "file_certs"

DEFAULT_POLL_INTERVAL = 1.0
MIN_POLL_INTERVAL = 0.01


@dataclass(frozen=True, slots=True)
class LeafFiles:
    """Where one service's leaf lives; paths as written in the config."""

    key: str  # the TOML key, for messages
    service: ServiceName
    cert: str
    key_file: str


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated ``[sites.NAME.file_certs]`` section."""

    roots: tuple[str, ...] = ()
    #: (trust domain, its root files) for each peer trust domain.
    trust_bundles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    poll_interval: float = DEFAULT_POLL_INTERVAL
    leaves: tuple[LeafFiles, ...] = ()


class CertificateFileError(Exception):
    """A certificate file that cannot be used; ``field`` is its config key (roots, cert, key)."""

    def __init__(self, field: str, path: Path, message: str) -> None:
        self.field = field
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


def parse_service_key(key: str) -> ServiceName | None:
    """``name``, ``namespace/name`` or ``partition/namespace/name``; ``None`` if malformed."""
    parts = key.split("/")
    if not all(parts) or len(parts) > 3:
        return None
    if len(parts) == 1:
        return ServiceName(parts[0])
    if len(parts) == 2:
        return ServiceName(parts[1], parts[0])
    return ServiceName(parts[2], parts[1], parts[0])


def read_settings(site: SiteConfig) -> tuple[Settings, list[ConfigProblem]]:
    """Parse this plugin's section (no file access); bad entries are reported and left out."""
    r = site.reader(NAME)
    # Only read when present: SectionReader.strings() currently rejects its own default.
    roots = r.strings("roots") if "roots" in r.table else ()
    poll_interval = r.duration("poll_interval", DEFAULT_POLL_INTERVAL, minimum=MIN_POLL_INTERVAL)
    leaves_table = r.table_value("leaves")
    bundles_table = r.table_value("trust_bundles")
    problems = r.finish()
    bundles: list[tuple[str, tuple[str, ...]]] = []
    br = SectionReader(site.file, r.key("trust_bundles"), bundles_table)
    for domain in bundles_table:
        files = br.strings(domain)
        where = f"{r.prefix}.{bundle_field(domain)}"
        if domain.lower() == site.trust_domain:
            problems.append(
                ConfigProblem(
                    site.file, where, "is the site's own trust domain: list its roots in `roots`"
                )
            )
        elif domain.lower() not in site.extra_trust_domains:
            problems.append(
                ConfigProblem(
                    site.file,
                    where,
                    "is not in extra_trust_domains: a bundle for a trust domain the site "
                    "does not trust would never be used",
                )
            )
        elif files:
            bundles.append((domain.lower(), files))
    problems += br.problems
    leaves: list[LeafFiles] = []
    for key, table in leaves_table.items():
        dotted = f"{r.key('leaves')}.{key}"
        service = parse_service_key(key)
        if service is None:
            problems.append(
                ConfigProblem(
                    site.file,
                    dotted,
                    "must be a service name: name, namespace/name or partition/namespace/name",
                )
            )
        if not isinstance(table, Mapping):
            problems.append(
                ConfigProblem(site.file, dotted, "must be a table {cert = ..., key = ...}")
            )
            continue
        lr = SectionReader(site.file, dotted, table)
        cert = lr.string("cert", required=True)
        key_file = lr.string("key", required=True)
        problems += lr.finish()
        if service is not None and cert and key_file:
            leaves.append(LeafFiles(key, service, cert, key_file))
    return Settings(roots, tuple(bundles), poll_interval, tuple(leaves)), problems


def load_roots(path: Path, domain: str, field: str = "roots") -> tuple[x509.Certificate, ...]:
    """Every certificate in the root file ``path``, listed for trust domain ``domain``
    under the config key ``field``; :class:`CertificateFileError` if unusable or if a
    root names another trust domain in its ``spiffe://`` URI SAN."""
    try:
        certs = tuple(pki.load_certificates(_read(path, field)))
    except ValueError as e:
        raise CertificateFileError(field, path, str(e)) from None
    for cert in certs:
        problem = misconfigured(TrustRoot(cert, domain))
        if problem is not None:
            raise CertificateFileError(
                field, path, f"{problem} ({cert.subject.rfc4514_string()}); it is refused"
            )
    return certs


def bundle_field(domain: str) -> str:
    """The config key (below the section) of ``domain``'s bundle, as TOML spells it."""
    return f'trust_bundles."{domain}"'


def root_files(settings: Settings, site: SiteConfig) -> list[tuple[str, str, str]]:
    """(trust domain, config key, path as written) for every configured root file."""
    files = [(site.trust_domain, "roots", p) for p in settings.roots]
    for domain, paths in settings.trust_bundles:
        files += [(domain, bundle_field(domain), p) for p in paths]
    return files


def load_leaf_files(cert_path: Path, key_path: Path) -> LeafCertificate:
    """The leaf in ``cert_path`` (chain, leaf first) with its key in ``key_path``.

    Raises :class:`CertificateFileError` naming the file at fault: the certificate file when it
    cannot be read or parsed, the key file when it cannot or does not match.
    """
    try:
        chain = pki.load_certificates(_read(cert_path, "cert"))
    except ValueError as e:
        raise CertificateFileError("cert", cert_path, str(e)) from None
    try:
        key = pki.load_private_key(_read(key_path, "key"))
    except ValueError as e:
        raise CertificateFileError("key", key_path, str(e)) from None
    try:
        return pki.leaf_from_parts(chain, key)
    except ValueError:
        raise CertificateFileError(
            "key", key_path, f"does not match the certificate in {cert_path}"
        ) from None


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertificateFileError(field, path, f"cannot be read: {e.strerror or e}") from None


class FileCertificates:
    """A :class:`~gwcore.contract.providers.CertificateProvider` reading PEM files from disk.

    Material is loaded in the constructor (so ``trust_roots`` and ``leaf`` answer
    before ``start``) and again whenever a watched file changes. Each root file and
    each leaf is an item of its own: a bad file only freezes its own item.
    """

    name = NAME

    def __init__(self, site: SiteContext) -> None:
        self._site = site
        settings, _ = read_settings(site.config)
        #: (trust domain, config key, path) of every root file.
        self.root_files = tuple(
            (domain, field, site.resolve_path(p))
            for domain, field, p in root_files(settings, site.config)
        )
        self.leaf_files = {
            lf.service: (site.resolve_path(lf.cert), site.resolve_path(lf.key_file))
            for lf in settings.leaves
        }
        self._roots: dict[tuple[str, Path], tuple[x509.Certificate, ...]] = {}
        self._leaves: dict[ServiceName, LeafCertificate] = {}
        self._errors: dict[str, str] = {}  # item -> message while it is failing
        self._last_success: float | None = None
        self._changed: Callable[[], None] | None = None
        watched = list(
            dict.fromkeys(
                [*(p for _, _, p in self.root_files)]
                + [p for pair in self.leaf_files.values() for p in pair]
            )
        )
        self._watcher = FileWatcher(
            site.reactor,  # type: ignore[arg-type]
            watched,
            self.reload,
            interval=settings.poll_interval,
        )
        self.reload()

    # CertificateProvider

    def start(self, changed: Callable[[], None]) -> None:
        self._watcher.start()
        # Catch a change made between construction and the watcher's first snapshot.
        self.reload()
        self._changed = changed

    def stop(self) -> None:
        self._changed = None
        self._watcher.stop()

    def prepare(self, services: Collection[ServiceName]) -> None:
        """Nothing to fetch: leaves come from the configured files only."""

    def leaf(self, service: ServiceName) -> LeafCertificate | None:
        return self._leaves.get(service)

    def trust_roots(self) -> Sequence[TrustRoot]:
        """Each root with the trust domain it is listed under (``roots``: the site's)."""
        seen: set[tuple[str, bytes]] = set()
        roots: list[TrustRoot] = []
        for domain, _, path in self.root_files:
            for cert in self._roots.get((domain, path), ()):
                key = (domain, cert.fingerprint(hashes.SHA256()))
                if key not in seen:
                    seen.add(key)
                    roots.append(TrustRoot(cert, domain))
        return roots

    def health(self) -> SourceHealth:
        last_error = "; ".join(self._errors.values()) or None
        return SourceHealth(last_success=self._last_success, last_error=last_error)

    # loading

    def reload(self) -> bool:
        """Re-read every file; keep previous material for bad ones. True if anything changed.

        Calls ``changed`` (once) after a change once started.
        """
        changed = False
        for domain, field, path in self.root_files:
            item = f"{field} {path}"
            try:
                certs = load_roots(path, domain, field)
            except CertificateFileError as e:
                self._failed(item, e)
                continue
            self._errors.pop(item, None)
            if self._roots.get((domain, path)) != certs:
                self._roots[(domain, path)] = certs
                changed = True
                self._gauge("root", path.name).set(
                    min(c.not_valid_after_utc.timestamp() for c in certs)
                )
        for service, (cert_path, key_path) in self.leaf_files.items():
            item = f"leaf {service}"
            try:
                leaf = load_leaf_files(cert_path, key_path)
            except CertificateFileError as e:
                self._failed(item, e)
                continue
            self._errors.pop(item, None)
            old = self._leaves.get(service)
            if old is None or old.chain != leaf.chain:
                self._leaves[service] = leaf
                changed = True
                self._gauge("leaf", str(service)).set(leaf.not_after)
        if not self._errors:
            self._last_success = self._site.reactor.seconds()
        if changed and self._changed is not None:
            self._changed()
        return changed

    def _failed(self, item: str, problem: CertificateFileError) -> None:
        message = str(problem)
        if self._errors.get(item) == message:
            return  # still the same problem; reported when it appeared
        self._errors[item] = message
        self._site.metrics.certificate_errors.labels(site=self._site.name, provider=NAME).inc()
        self._site.log.warn(
            "file_certs: {key}: {file}: {problem}; keeping the previous material",
            key=f"{self._site.config.prefix}.{NAME}.{problem.field}",
            file=str(problem.path),
            problem=problem.message,
        )

    def _gauge(self, kind: str, name: str) -> Any:
        return self._site.metrics.certificate_expiry.labels(
            site=self._site.name, kind=kind, name=name
        )


# --- hooks -----------------------------------------------------------------------


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    """Check the section and every file it names (exists, parses, key matches)."""
    if NAME not in site.plugins:
        return []
    settings, problems = read_settings(site)
    prefix = f"{site.prefix}.{NAME}"
    for domain, field, root in root_files(settings, site):
        try:
            load_roots(site.base_dir / root, domain, field)
        except CertificateFileError as e:
            problems.append(ConfigProblem(site.file, f"{prefix}.{field}", str(e)))
    for lf in settings.leaves:
        try:
            load_leaf_files(site.base_dir / lf.cert, site.base_dir / lf.key_file)
        except CertificateFileError as e:
            problems.append(ConfigProblem(site.file, f"{prefix}.leaves.{lf.key}.{e.field}", str(e)))
    return problems


@hookimpl
def tgw_certificate_providers(site: SiteContext) -> Sequence[CertificateProvider]:
    if NAME not in site.config.plugins:
        return []
    return [FileCertificates(site)]
