"""Fakes and builders for testing tgw and tgw plugins (shipped for plugin authors).

- :class:`FakeSite` is a ``SiteContext`` driven by a ``task.Clock``, enough to
  unit-test a catalog source, certificate provider or authorization engine.
- :func:`site_config` builds a real, validated :class:`SiteConfig` from a dict.
- :class:`MeshCA` issues client and server leaves the way the mesh CA would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher

from gwcore.contract import pki
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.providers import CatalogView, LeafCertificate
from gwcore.policy.config import SiteConfig, parse_config
from gwcore.policy.model import ServiceName

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


def site_config(
    base_dir: Path,
    plugins: list[str] | tuple[str, ...] = (),
    sections: dict[str, dict[str, Any]] | None = None,
    *,
    key: str = "main",
    gateway: dict[str, Any] | None = None,
    **site: Any,
) -> SiteConfig:
    """A validated site config, as if read from ``base_dir/tgw.toml``."""
    table: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "name": "legacy-gw",
        "datacenter": "dc1",
        "trust_domain": TRUST_DOMAIN,
        "plugins": list(plugins),
        **site,
    }
    table.update(sections or {})
    data = {"gateway": {"state_dir": "state", **(gateway or {})}, "sites": {key: table}}
    return parse_config(data, str(base_dir / "tgw.toml"), base_dir).site(key)


@dataclass
class FakeSite:
    """A ``SiteContext`` for unit tests: a fake clock, real metrics, a settable catalog.

    Unless a ``log`` is given, what the plugin logs is kept in ``events`` (one dict per
    log call; also sent on to the global log), so a test can assert "one line, no
    traceback".
    """

    config: SiteConfig
    state_dir: Path
    reactor: Clock = field(default_factory=Clock)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    log: Logger | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    view: CatalogView = field(default_factory=lambda: CatalogView((), (), ""))
    subscribers: list[Callable[[CatalogView], None]] = field(default_factory=list)
    address: tuple[str, int] | None = None
    own_leaf: LeafCertificate | None = None
    roots: list[x509.Certificate] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.log is None:

            def record(event: dict[str, Any]) -> None:
                self.events.append(event)
                globalLogPublisher(event)  # still seen by whoever observes the global log

            self.log = Logger(namespace="tgw.test", observer=record)

    @property
    def name(self) -> str:
        return self.config.key

    def plugin_config(self, plugin: str) -> Any:
        return self.config.plugin_section(plugin)

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.config.base_dir / p

    def catalog_view(self) -> CatalogView:
        return self.view

    def subscribe_catalog(self, callback: Callable[[CatalogView], None]) -> None:
        self.subscribers.append(callback)

    def listening_address(self) -> tuple[str, int] | None:
        return self.address

    def gateway_leaf(self) -> LeafCertificate | None:
        return self.own_leaf

    def trust_roots(self) -> list[x509.Certificate]:
        return list(self.roots)

    def trust_bundles(self) -> dict[str, list[x509.Certificate]]:
        """``roots`` as the site's own trust domain's bundle."""
        return {self.config.trust_domain: list(self.roots)} if self.roots else {}

    def publish_view(self, view: CatalogView) -> None:
        """Replace the merged catalog and notify subscribers, as the site does."""
        self.view = view
        for callback in list(self.subscribers):
            callback(view)


class MeshCA:
    """A mesh certificate authority for tests (the same primitives as the built-in CA)."""

    def __init__(
        self,
        trust_domain: str = TRUST_DOMAIN,
        cert: x509.Certificate | None = None,
        key: Any = None,
    ) -> None:
        self.trust_domain = trust_domain
        if cert is None or key is None:
            cert, key = pki.new_ca(trust_domain)
        self.cert = cert
        self.key = key

    def leaf(self, service: str, datacenter: str = "dc1", **kw: Any) -> LeafCertificate:
        """A leaf with the service's SPIFFE URI (``kw`` goes to ``pki.issue_leaf``)."""
        return pki.service_leaf(
            self.cert, self.key, ServiceName(service), datacenter, self.trust_domain, **kw
        )

    def leaf_with_uris(self, uris: list[str], **kw: Any) -> LeafCertificate:
        """A leaf with arbitrary URI SANs (none, several, foreign trust domains...)."""
        if not uris:
            return pki.issue_leaf(self.cert, self.key, "", dns_names=["no-uri.test"], **kw)
        return pki.issue_leaf(self.cert, self.key, uris[0], extra_uris=uris[1:], **kw)

    def write(self, directory: Path, name: str, leaf: LeafCertificate) -> tuple[Path, Path]:
        """Write ``name.pem`` (chain) and ``name-key.pem`` under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        chain, key = pki.leaf_pem(leaf)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(chain)
        key_path.write_bytes(key)
        return cert_path, key_path

    def write_root(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pki.certificate_pem(self.cert))
        return path
