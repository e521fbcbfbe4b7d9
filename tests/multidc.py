"""Several "datacenters" in one test process: one GatewayService per gateway, each on its
own loopback port, all sharing one mesh CA (one trust domain across the federation, as
with Consul WAN federation), each with its own catalog directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.plugins.builtin_ca import load_or_create_ca
from gwcore.runtime.config_check import check_config
from gwcore.runtime.service import GatewayService
from gwcore.testing import TRUST_DOMAIN, MeshCA
from tests.harness import registration, sample_sum, sleep, write_json


def located(doc: dict, datacenter: str) -> dict:
    """A registration as Consul's ``?dc=`` answer shows it: with its datacenter."""
    return doc | {"Datacenter": datacenter}


def gateway_instance(kind: str, name: str, port: int, datacenter: str) -> dict:
    """A registered gateway instance (``Kind`` terminating-gateway or mesh-gateway)."""
    return {
        "Node": f"{name}-node-{port}",
        "Address": "127.0.0.1",
        "Datacenter": datacenter,
        "Service": {"ID": f"{name}-{port}", "Service": name, "Kind": kind, "Port": port},
    }


def service_in(service: str, port: int, datacenter: str) -> dict:
    return located(registration(service, port), datacenter)


def spiffe(service: str, datacenter: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/dc/{datacenter}/svc/{service}"


async def settle(*gateways: DCGateway) -> None:
    """Wait (bounded) until every connection of these gateways closed and was recorded."""
    for _ in range(250):
        if all(not g.site.active for g in gateways):
            return
        await sleep(0.02)
    raise AssertionError("connections still open")


@dataclass
class DCGateway:
    """One gateway (one site) of one datacenter, running in this process."""

    key: str
    root: Path
    service: GatewayService

    @property
    def site(self) -> Any:
        return self.service.sites[self.key]

    @property
    def port(self) -> int:
        return self.site.port.getHost().port

    def metric(self, name: str, **labels: str) -> float:
        value = sample_sum(self.service.metrics.registry, name, {"site": self.key, **labels})
        return value or 0.0

    def access_records(self) -> list[dict[str, Any]]:
        path = self.root / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Federation:
    """Starts gateways in one shared trust domain; stops them all at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        cert, key = load_or_create_ca(self.ca_dir, TRUST_DOMAIN)
        self.ca = MeshCA(TRUST_DOMAIN, cert, key)
        self.gateways: list[DCGateway] = []

    def client_files(self, service: str, datacenter: str = "dc1") -> tuple[Path, Path, Path]:
        directory = self.root / "clients"
        leaf = self.ca.leaf(service, datacenter)
        cert, key = self.ca.write(directory, f"{service}-{datacenter}", leaf)
        return cert, key, self.ca.write_root(directory / "root.pem")

    async def start(
        self,
        key: str,
        datacenter: str,
        catalog: list[dict],
        *,
        role: str = "terminating",
        name: str | None = None,
        plugins: list[str] | None = None,
        options: dict[str, Any] | None = None,
        extra: str = "",
    ) -> DCGateway:
        directory = self.root / key
        write_json(directory / "catalog" / "catalog.json", catalog)
        if plugins is None:
            plugins = ["file_catalog"] if role == "mesh" else ["file_catalog", "builtin_ca"]
            plugins += [] if role == "mesh" else ["intentions"]
        settings = {
            "handshake_timeout": "5s",
            "connect_timeout": "2s",
            "drain_timeout": "1s",
            **(options or {}),
        }
        lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        files = "file_catalog" in plugins
        catalog_section = (
            f'[sites.{key}.file_catalog]\npaths = ["catalog"]\npoll_interval = "0.1s"'
            if files
            else ""
        )
        ca = (
            f'[sites.{key}.builtin_ca]\nca_dir = "{self.ca_dir}"' if "builtin_ca" in plugins else ""
        )
        path = directory / "tgw.toml"
        path.write_text(
            f"""
[gateway]
admin = ""
access_log = "access.log"
state_dir = "state"

[sites.{key}]
listen = "tcp:0:interface=127.0.0.1"
name = "{name or key}"
datacenter = "{datacenter}"
trust_domain = "{TRUST_DOMAIN}"
role = "{role}"
plugins = {json.dumps(plugins)}
{lines}

{catalog_section}

{ca}
{extra}
"""
        )
        checked = check_config(path)
        assert checked.ok, [str(p) for p in checked.problems]
        service = GatewayService(checked, path, reactor)
        gateway = DCGateway(key, directory, service)
        self.gateways.append(gateway)
        service.startService()
        assert service.started is not None
        await service.started
        if service.failure is not None:
            service.failure.raiseException()
        return gateway

    async def stop(self) -> None:
        for gateway in reversed(self.gateways):
            if gateway.service.running:
                await gateway.service.stopService()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    yield fed
    pytest_twisted.blockon(Deferred.fromCoroutine(fed.stop()))
