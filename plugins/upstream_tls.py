"""Essential plugin: TLS and mTLS origination to destinations with ``CAFile`` set.

Consul's rules: ``CAFile`` alone is one-way TLS (chain verified against it);
``CAFile`` + ``CertFile`` + ``KeyFile`` is mTLS; ``SNI`` is sent and the service's
certificate must carry it as a SAN; without ``SNI`` only the chain is verified and
a warning is logged once per destination. Beyond Consul, per destination in
``[sites.NAME.upstream_tls.services.<service>]``: TLS minimum and maximum version,
ciphers, a SAN to expect that differs from the SNI sent, and ``verify = "chain"``.

The files are watched: an in-place write or an atomic rename of a CA, certificate
or key takes effect for the next connection (Consul needs a restart: its issue
#8198); connections already open keep their TLS state. A file that does not load
keeps the previous material in force. Contexts are built once per destination
and material version. A TLS session is resumed only by a connection that would
verify the service exactly as the session's full handshake did: sessions are kept
per endpoint *and* verification material (the digest of the CA, certificate and key
files' paths and contents), SNI and expected name, so a changed ``CAFile`` (its
content, or a catalog change of its path) always means a full, verified handshake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred

from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.metrics import service_labels
from gwcore.contract.metrics_series import remove_series
from gwcore.contract.providers import CatalogView, SiteContext, UpstreamStrategy
from gwcore.net.filewatch import FileWatcher
from gwcore.net.upstream import UpstreamConnectError
from gwcore.net.upstream_tls import (
    TLS_VERSIONS,
    TLSUpstreamProtocol,
    Verification,
    client_context,
    connect_tls,
)
from gwcore.policy.config import ConfigProblem, SectionReader, SiteConfig
from gwcore.policy.model import Destination, Endpoint, TLSMode

NAME = "upstream_tls"
_VERSIONS = tuple(TLS_VERSIONS)
_VERIFY = ("san", "chain")


@dataclass(frozen=True, slots=True)
class ServiceTLS:
    """Per-destination knobs; empty strings mean "as Consul would"."""

    min_version: str = "1.2"
    max_version: str = ""
    ciphers: str = ""
    sni: str = ""
    expect_san: str = ""
    verify: str = "san"


@dataclass(frozen=True, slots=True)
class Settings:
    defaults: ServiceTLS = ServiceTLS()
    services: dict[str, ServiceTLS] = field(default_factory=dict)
    session_resumption: bool = True
    poll_interval: float = 1.0

    def for_service(self, name: str) -> ServiceTLS:
        return self.services.get(name, self.defaults)


def _read_service(r: SectionReader, base: ServiceTLS) -> ServiceTLS:
    min_version = r.string("min_version", base.min_version, choices=_VERSIONS) or base.min_version
    max_version = r.string("max_version", base.max_version, choices=(*_VERSIONS, "")) or ""
    if max_version and TLS_VERSIONS[max_version] < TLS_VERSIONS[min_version]:
        r.problem("max_version", f"{max_version} is below min_version {min_version}")
        max_version = ""
    ciphers = r.string("ciphers", base.ciphers) or ""
    if ciphers:
        try:
            SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode())
        except SSL.Error:
            r.problem("ciphers", f"OpenSSL accepts no cipher from {ciphers!r}")
            ciphers = base.ciphers
    return ServiceTLS(
        min_version=min_version,
        max_version=max_version,
        ciphers=ciphers,
        sni=r.string("sni", base.sni) or "",
        expect_san=r.string("expect_san", base.expect_san) or "",
        verify=r.string("verify", base.verify, choices=_VERIFY) or base.verify,
    )


def read_settings(site: SiteConfig) -> tuple[Settings, list[ConfigProblem]]:
    r = site.reader(NAME)
    defaults = _read_service(r, ServiceTLS())
    resumption = r.boolean("session_resumption", True)
    poll = r.duration("poll_interval", 1.0, minimum=0.05)
    problems: list[ConfigProblem] = []
    services: dict[str, ServiceTLS] = {}
    for name, table in r.table_value("services").items():
        sr = SectionReader(
            site.file, f"{r.prefix}.services.{name}", table if isinstance(table, dict) else {}
        )
        if not isinstance(table, dict):
            sr.problem("", "must be a table")
        services[name] = _read_service(sr, defaults)
        problems += sr.finish()
    problems = r.finish() + problems
    return Settings(defaults, services, resumption, poll), problems


@dataclass(slots=True)
class _Material:
    """A built context and the file digests it came from."""

    context: SSL.Context
    digest: str
    files: tuple[str, ...]


def _digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.encode() + b"\0" + Path(path).read_bytes())
    return h.hexdigest()


class TLSOriginationStrategy:
    """The ``tls`` upstream strategy (see the module docstring)."""

    name = "tls"

    def __init__(self, site: SiteContext, settings: Settings) -> None:
        self.site = site
        self.settings = settings
        self.reactor = site.reactor
        self._materials: dict[tuple[str, ...], _Material] = {}
        # (service, endpoint, material digest, SNI, expected name) -> session (_connect).
        self._sessions: dict[tuple[str, ...], SSL.Session] = {}
        self._warned: set[str] = set()
        self._watcher: FileWatcher | None = None
        self._watched: frozenset[str] = frozenset()
        self.reloads = 0  # material rebuilt after a file change (for /certs and tests)
        self._expiry_series: set[tuple[str, str]] = set()  # (kind, service) exported
        site.subscribe_catalog(self._on_catalog)
        self._on_catalog(site.catalog_view())

    # --- material -----------------------------------------------------------------

    def _key(self, destination: Destination, knobs: ServiceTLS) -> tuple[str, ...]:
        t = destination.tls
        return (
            destination.name,
            t.ca_file,
            t.cert_file,
            t.key_file,
            knobs.min_version,
            knobs.max_version,
            knobs.ciphers,
        )

    def _files(self, destination: Destination) -> tuple[str, ...]:
        t = destination.tls
        files = [t.ca_file]
        if destination.tls.mode is TLSMode.MTLS:
            files += [t.cert_file, t.key_file]
        return tuple(str(self.site.resolve_path(f)) for f in files)

    def _build(self, destination: Destination, knobs: ServiceTLS) -> _Material:
        files = self._files(destination)
        digest = _digest(files)
        mtls = destination.tls.mode is TLSMode.MTLS
        ctx = client_context(
            files[0],
            files[1] if mtls else None,
            files[2] if mtls else None,
            knobs.min_version,
            knobs.max_version or None,
            knobs.ciphers or None,
        )
        self._export_expiry(destination, files)
        return _Material(ctx, digest, files)

    def _material(self, destination: Destination) -> _Material:
        knobs = self.settings.for_service(destination.name)
        key = self._key(destination, knobs)
        material = self._materials.get(key)
        if material is None:
            try:
                material = self._build(destination, knobs)
            except (OSError, SSL.Error, ValueError) as e:
                self._count("tls_config", destination)
                raise UpstreamConnectError(
                    "tls_config",
                    f"TLS material for {destination.name} does not load ({_describe(e)}); refusing "
                    f"rather than sending plaintext",
                ) from e
            self._materials[key] = material
        return material

    def _reload(self) -> None:
        """Files changed: rebuild what changed; keep the old context if the new files are bad."""
        for key, material in list(self._materials.items()):
            try:
                digest = _digest(material.files)
            except OSError as e:
                self.site.log.error(
                    "upstream TLS file unreadable, keeping the previous material: {e}", e=e
                )
                continue
            if digest == material.digest:
                continue
            name = key[0]
            destination = next(
                (d for d in self.site.catalog_view().destinations if d.name == name), None
            )
            if destination is None:
                del self._materials[key]
                continue
            try:
                fresh = self._build(destination, self.settings.for_service(name))
            except (OSError, SSL.Error, ValueError) as e:
                self._count("tls_config", destination)
                self.site.metrics.certificate_errors.labels(
                    site=self.site.name, provider=NAME
                ).inc()
                self.site.log.error(
                    "new TLS material for {service} does not load ({error}); "
                    "the previous stays in force",
                    service=name,
                    error=_describe(e),
                )
                continue
            self._materials[key] = fresh
            self.reloads += 1
            self._sessions = {k: v for k, v in self._sessions.items() if k[0] != name}
            self.site.log.info("upstream TLS material for {service} reloaded", service=name)

    def _on_catalog(self, view: CatalogView) -> None:
        self._drop_expiry({d.name for d in view.destinations if d.tls.mode is not TLSMode.PLAIN})
        files: set[str] = set()
        for destination in view.destinations:
            if destination.tls.mode is not TLSMode.PLAIN:
                files.update(self._files(destination))
        watched = frozenset(files)
        if watched == self._watched:
            return
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._watched = watched
        live = {d.name for d in view.destinations}
        self._materials = {k: m for k, m in self._materials.items() if k[0] in live}
        if watched:
            self._watcher = FileWatcher(
                self.reactor,
                [Path(f) for f in sorted(watched)],
                self._reload,
                interval=self.settings.poll_interval,
            )
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _drop_expiry(self, served: set[str]) -> None:
        """Delete the expiry series of services no longer originated with TLS: an
        expiry alert must not fire for a certificate tgw no longer uses."""
        for kind, name in [k for k in self._expiry_series if k[1] not in served]:
            self._expiry_series.discard((kind, name))
            remove_series(self.site.metrics.certificate_expiry, self.site.name, kind, name)

    def _export_expiry(self, destination: Destination, files: tuple[str, ...]) -> None:
        gauge = self.site.metrics.certificate_expiry
        self._expiry_series.add(("upstream_ca", destination.name))
        if len(files) == 3:
            self._expiry_series.add(("upstream_cert", destination.name))
        try:
            cas = x509.load_pem_x509_certificates(Path(files[0]).read_bytes())
            gauge.labels(site=self.site.name, kind="upstream_ca", name=destination.name).set(
                min(c.not_valid_after_utc.timestamp() for c in cas)
            )
            if len(files) == 3:
                leaf = x509.load_pem_x509_certificates(Path(files[1]).read_bytes())[0]
                gauge.labels(site=self.site.name, kind="upstream_cert", name=destination.name).set(
                    leaf.not_valid_after_utc.timestamp()
                )
        except (OSError, ValueError):
            pass  # the context build reports unusable files

    def _count(self, reason: str, destination: Destination) -> None:
        self.site.metrics.upstream_tls_errors.labels(
            site=self.site.name, **service_labels(destination), reason=reason
        ).inc()

    # --- UpstreamStrategy -----------------------------------------------------

    def applies_to(self, destination: Destination) -> bool:
        return destination.tls.mode is not TLSMode.PLAIN

    def connect(
        self, destination: Destination, endpoint: Endpoint, factory: Any, timeout: float
    ) -> Deferred[TLSUpstreamProtocol]:
        try:
            material = self._material(destination)
        except UpstreamConnectError as e:
            return Deferred.fromCoroutine(_raise(e))
        knobs = self.settings.for_service(destination.name)
        sni = knobs.sni or destination.tls.sni or None
        if knobs.verify == "chain":
            expect = None
        else:
            expect = knobs.expect_san or sni
            if expect is None and destination.name not in self._warned:
                self._warned.add(destination.name)
                self.site.log.warn(
                    "TLS is configured but SNI is not set for service {service}; only the "
                    "certificate chain is verified. Enabling SNI is strongly recommended "
                    "when using TLS.",
                    service=destination.name,
                )
        # What the session's handshake verified: never resume under other material or names.
        key = (destination.name, str(endpoint), material.digest, sni or "", expect or "")
        session = self._sessions.get(key) if self.settings.session_resumption else None
        # Offer the service the protocol the client agreed to with us (see ALPN_BY_PROTOCOL).
        alpn = getattr(getattr(factory, "downstream", None), "alpn", None)
        return Deferred.fromCoroutine(
            self._connect(
                destination,
                endpoint,
                material.context,
                sni,
                Verification(expect),
                session,
                key,
                timeout,
                alpn,
            )
        )

    async def _connect(
        self,
        destination: Destination,
        endpoint: Endpoint,
        context: SSL.Context,
        sni: str | None,
        verification: Verification,
        session: SSL.Session | None,
        key: tuple[str, ...],
        timeout: float,
        alpn: bytes | None = None,
    ) -> TLSUpstreamProtocol:
        try:
            proto = await connect_tls(
                self.reactor,
                endpoint,
                timeout,
                lambda: TLSUpstreamProtocol(context, sni, verification, session, alpn),
            )
        except UpstreamConnectError as e:
            self._count(e.reason, destination)
            raise
        if self.settings.session_resumption:
            proto.on_session = lambda s: self._keep_session(key, s)
        return proto

    def _keep_session(self, key: tuple[str, ...], session: SSL.Session) -> None:
        """One session per endpoint: one kept under other material is never resumable."""
        endpoint = key[:2]
        for old in [k for k in self._sessions if k[:2] == endpoint and k != key]:
            del self._sessions[old]
        self._sessions[key] = session


async def _raise(error: Exception) -> Any:
    raise error


def _describe(error: BaseException) -> str:
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(item[-1]) for item in error.args[0] if item) or repr(error)
    return f"{type(error).__name__}: {error}"


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    return read_settings(site)[1]


@hookimpl
def tgw_upstream_strategies(site: SiteContext) -> Sequence[UpstreamStrategy]:
    settings, _ = read_settings(site.config)
    return [TLSOriginationStrategy(site, settings)]
