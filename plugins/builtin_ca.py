"""The ``builtin_ca`` plugin: an embedded certificate authority, no external service needed.

The CA's root and key live in a directory of their own (``ca.pem`` and ``ca-key.pem``),
created on first use and reused afterwards, so every restart and every worker
process serves leaves from the same root. Leaves are issued in memory, one per
destination, with the destination's SPIFFE ID in the site's datacenter and trust
domain, and re-issued once ``rotate_fraction`` of their lifetime has passed.

Config, all optional, in ``[sites.NAME.builtin_ca]``::

    leaf_ttl = "72h"          # lifetime of issued leaves (at least 60s)
    rotate_fraction = 0.5     # re-issue after this fraction of the lifetime (0.1 to 0.9)
    ca_dir = "ca"             # relative to the config file;
                              # default <gateway state_dir>/ca/<trust_domain>
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from gwcore.contract import pki
from gwcore.contract.hookspecs import hookimpl
from gwcore.contract.providers import LeafCertificate, SourceHealth, TrustRoot
from gwcore.policy.config import ConfigProblem, SectionReader, SiteConfig
from gwcore.policy.model import ServiceName

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from twisted.internet.interfaces import IDelayedCall

    from gwcore.contract.providers import CertificateProvider, SiteContext

NAME = "builtin_ca"

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
_LOCK_FILE = ".lock"

DEFAULT_LEAF_TTL = 72 * 3600.0
MIN_LEAF_TTL = 60.0
DEFAULT_ROTATE_FRACTION = 0.5
_FRACTION_RANGE = (0.1, 0.9)
_MIN_TIMER_DELAY = 1.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated ``[sites.NAME.builtin_ca]`` section; ``ca_dir`` is as written (or None)."""

    leaf_ttl: float = DEFAULT_LEAF_TTL
    rotate_fraction: float = DEFAULT_ROTATE_FRACTION
    ca_dir: str | None = None


def read_settings(site: SiteConfig) -> tuple[Settings, list[ConfigProblem]]:
    """Parse this plugin's section of ``site``; bad values fall back to defaults, reported."""
    r = site.reader(NAME)
    leaf_ttl = r.duration("leaf_ttl", DEFAULT_LEAF_TTL, minimum=MIN_LEAF_TTL)
    fraction = r.number(
        "rotate_fraction",
        DEFAULT_ROTATE_FRACTION,
        minimum=_FRACTION_RANGE[0],
        maximum=_FRACTION_RANGE[1],
    )
    ca_dir = r.string("ca_dir")
    if ca_dir == "":
        r.problem("ca_dir", "must not be empty (leave it out for the default)")
        ca_dir = None
    problems = r.finish()
    if ca_dir is not None:
        problems += _check_existing_ca(site, r, site.base_dir / ca_dir)
    return Settings(leaf_ttl, fraction, ca_dir), problems


def _check_existing_ca(site: SiteConfig, r: SectionReader, ca_dir: Path) -> list[ConfigProblem]:
    """A CA already in ``ca_dir`` must belong to the site's trust domain."""
    ca_file = ca_dir / CA_FILE
    if not ca_file.exists():
        return []
    try:
        _check_ca_file(ca_file, site.trust_domain)
    except (OSError, ValueError) as e:
        return [ConfigProblem(site.file, r.key("ca_dir"), str(e))]
    return []


# --- the CA on disk --------------------------------------------------------------


def default_ca_dir(state_dir: Path, trust_domain: str) -> Path:
    """Where the CA of ``trust_domain`` lives when ``ca_dir`` is not configured."""
    return Path(state_dir) / "ca" / trust_domain


def load_or_create_ca(
    ca_dir: Path, trust_domain: str
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The CA stored in ``ca_dir``, created there on first use.

    Creates ``ca_dir`` (mode 0700) and writes ``ca.pem`` and ``ca-key.pem`` (mode
    0600), each atomically (temporary file, then rename), under an exclusive lock so
    concurrent worker processes end up with one CA. Raises ``ValueError`` naming the
    file when the stored CA belongs to another trust domain, its key does not match,
    or only one of the two files exists; ``OSError`` when the directory is unusable.
    """
    ca_dir = Path(ca_dir)
    if not ca_dir.is_dir():
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(ca_dir, 0o700)  # mkdir's mode is filtered by the umask
    cert_path, key_path = ca_dir / CA_FILE, ca_dir / CA_KEY_FILE
    with _locked(ca_dir / _LOCK_FILE):
        if cert_path.exists() or key_path.exists():
            return _load_ca(cert_path, key_path, trust_domain)
        cert, key = pki.new_ca(trust_domain)
        _write_atomically(key_path, pki.key_pem(key), 0o600)
        _write_atomically(cert_path, pki.certificate_pem(cert), 0o644)
        return cert, key


def _load_ca(
    cert_path: Path, key_path: Path, trust_domain: str
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    for path in (cert_path, key_path):
        if not path.exists():
            other = key_path if path is cert_path else cert_path
            raise ValueError(f"{path} is missing but {other} exists; restore it or remove both")
    cert = _check_ca_file(cert_path, trust_domain)
    try:
        key = pki.load_private_key(key_path.read_bytes())
        pki.leaf_from_parts((cert,), key)
    except ValueError as e:
        raise ValueError(f"{key_path}: {e}") from None
    return cert, key  # type: ignore[return-value]


def _check_ca_file(cert_path: Path, trust_domain: str) -> x509.Certificate:
    try:
        cert = pki.load_certificates(cert_path.read_bytes())[0]
    except ValueError as e:
        raise ValueError(f"{cert_path}: {e}") from None
    found = pki.trust_domain_of(cert)
    if found is None:
        raise ValueError(f"{cert_path}: the CA has no spiffe://<trust-domain> URI SAN")
    if found != trust_domain.lower():
        raise ValueError(
            f"{cert_path}: the CA belongs to trust domain {found!r}, not {trust_domain!r}"
        )
    return cert


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- the provider ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Issued:
    leaf: LeafCertificate
    rotate_at: float


class BuiltinCA:
    """A :class:`~gwcore.contract.providers.CertificateProvider` backed by the embedded CA.

    All times come from ``site.reactor.seconds()``, so a fake clock drives both the
    rotation timer and the validity of issued leaves. Loading (or creating) the CA
    happens in the constructor: a CA of the wrong trust domain fails the site's
    start with a message naming the file.
    """

    name = NAME

    def __init__(self, site: SiteContext) -> None:
        self._site = site
        settings, _ = read_settings(site.config)
        self.leaf_ttl = settings.leaf_ttl
        self.rotate_fraction = settings.rotate_fraction
        if settings.ca_dir is not None:
            self.ca_dir = site.resolve_path(settings.ca_dir)
        else:
            self.ca_dir = default_ca_dir(site.state_dir, site.config.trust_domain)
        self.ca_cert, self._ca_key = load_or_create_ca(self.ca_dir, site.config.trust_domain)
        self._issued: dict[ServiceName, _Issued] = {}
        self._changed: Callable[[], None] | None = None
        self._timer: IDelayedCall | None = None
        self._last_success = site.reactor.seconds()  # loading the root counts as success
        self._gauge("root", NAME).set(self.ca_cert.not_valid_after_utc.timestamp())

    # CertificateProvider

    def start(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._schedule()

    def stop(self) -> None:
        self._changed = None
        self._cancel_timer()

    def prepare(self, services: Collection[ServiceName]) -> None:
        """Issue a leaf for each service that has none yet (synchronously)."""
        fresh = [s for s in services if s not in self._issued]
        for service in fresh:
            self._issue(service)
        if fresh:
            self._schedule()

    def leaf(self, service: ServiceName) -> LeafCertificate:
        """The current leaf of ``service``, issued now if it has none or it expired."""
        issued = self._issued.get(service)
        if issued is None or issued.leaf.not_after <= self._site.reactor.seconds():
            issued = self._issue(service)
            self._schedule()
        return issued.leaf

    def trust_roots(self) -> Sequence[TrustRoot]:
        """The CA's root, for the site's own trust domain (the one it was made for)."""
        return [TrustRoot(self.ca_cert, self._site.config.trust_domain)]

    def health(self) -> SourceHealth:
        return SourceHealth(last_success=self._last_success, last_error=None)

    # rotation

    def _issue(self, service: ServiceName) -> _Issued:
        config = self._site.config
        now = self._site.reactor.seconds()
        leaf = pki.service_leaf(
            self.ca_cert,
            self._ca_key,
            service,
            config.datacenter,
            config.trust_domain,
            valid_for=self.leaf_ttl,
            now=now,
        )
        # Relative to the real notAfter: it is clamped to the root's and truncated to seconds.
        issued = _Issued(leaf, now + self.rotate_fraction * (leaf.not_after - now))
        self._issued[service] = issued
        self._last_success = now
        self._gauge("leaf", str(service)).set(leaf.not_after)
        return issued

    def _rotate(self) -> None:
        self._timer = None
        now = self._site.reactor.seconds()
        due = [s for s, issued in self._issued.items() if issued.rotate_at <= now]
        for service in due:
            self._issue(service)
        self._schedule()
        if due and self._changed is not None:
            self._changed()

    def _schedule(self) -> None:
        """(Re)arm the timer for the earliest rotate point; no timer before start."""
        self._cancel_timer()
        if self._changed is None or not self._issued:
            return
        next_at = min(issued.rotate_at for issued in self._issued.values())
        delay = max(_MIN_TIMER_DELAY, next_at - self._site.reactor.seconds())
        self._timer = self._site.reactor.callLater(delay, self._rotate)  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gauge(self, kind: str, name: str) -> Any:
        return self._site.metrics.certificate_expiry.labels(
            site=self._site.name, kind=kind, name=name
        )


# --- hooks -----------------------------------------------------------------------


@hookimpl
def tgw_validate_site_config(site: SiteConfig) -> Sequence[ConfigProblem]:
    if NAME not in site.plugins:
        return []
    _, problems = read_settings(site)
    return problems


@hookimpl
def tgw_certificate_providers(site: SiteContext) -> Sequence[CertificateProvider]:
    if NAME not in site.config.plugins:
        return []
    return [BuiltinCA(site)]
