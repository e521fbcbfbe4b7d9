"""Test helpers for plugin authors: fakes (``FakeSite``, ``site_config``, ``MeshCA``) here,
and a Consul agent double in ``gwcore.testing.consul``."""

from gwcore.testing.fakes import TRUST_DOMAIN, FakeSite, MeshCA, site_config

__all__ = ["TRUST_DOMAIN", "FakeSite", "MeshCA", "site_config"]
