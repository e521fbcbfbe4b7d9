"""The three Consul plugins together, end to end: an in-process gateway whose whole stack
is consul_catalog + consul_certs + consul_intentions, against the Consul double, with real
TLS clients on 127.0.0.1 holding leaves from the double's CA."""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gwcore.contract import pki
from gwcore.runtime.config_check import check_config
from gwcore.runtime.service import GatewayService
from gwcore.testing import TRUST_DOMAIN, MeshCA
from gwcore.testing.consul import ConsulDouble
from tests.harness import (
    DC,
    GATEWAY,
    Gateway,
    HandshakeRefusedError,
    handshake_transcript,
    hello,
    in_thread,
    peer_uris,
    request,
    sleep,
    sni_for,
    tls_connect,
)

STACK = [
    "gwcore.plugins.consul_catalog",
    "gwcore.plugins.consul_certs",
    "gwcore.plugins.consul_intentions",
]
LONG_WAIT = 30.0
"""A blocking wait no test outlasts: a change seen sooner than this came by waking the
blocked query (one round trip), not by a wait running out."""
FAST = {
    "wait": "2s",
    "timeout": "3s",
    "retry_min": "0.05s",
    "retry_max": "0.3s",
    "rate": 50,
}


@dataclass
class ConsulGateway(Gateway):
    """A :class:`Gateway` whose stack talks to a :class:`ConsulDouble` instead of files."""

    double: Any = None
    catalog_options: dict[str, Any] | None = None
    intentions_options: dict[str, Any] | None = None
    certs_options: dict[str, Any] | None = None
    wait: str = FAST["wait"]
    """Every Consul plugin's blocking ``wait``."""

    def __post_init__(self) -> None:
        self.plugins = list(STACK)

    def write_config(self) -> Path:
        def section(name: str, extra: dict[str, Any] | None = None) -> str:
            values = {"address": self.double.address, **FAST, "wait": self.wait, **(extra or {})}
            body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
            return f'[sites.main."{name}"]\n{body}\n'

        sections = [
            section(STACK[0], {"register": False, **(self.catalog_options or {})}),
            section(STACK[1], self.certs_options),
            section(STACK[2], self.intentions_options),
        ]
        settings = {"handshake_timeout": "5s", "connect_timeout": "2s", **self.site_options}
        options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        text = f"""
[gateway]
admin = "tcp:0:interface=127.0.0.1"
access_log = "access.log"
state_dir = "state"

[sites.main]
listen = "tcp:0:interface=127.0.0.1"
name = "{GATEWAY}"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
plugins = {json.dumps(self.plugins)}
{options}

{"".join(sections)}
"""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "tgw.toml"
        path.write_text(text)
        return path

    async def start(self) -> ConsulGateway:
        root = self.double.active_root
        self.ca = MeshCA(TRUST_DOMAIN, root.cert, root.key)
        path = self.write_config()
        checked = check_config(path)
        assert checked.ok, [str(p) for p in checked.problems]
        self.service = GatewayService(checked, path, reactor)
        self.service.startService()
        assert self.service.started is not None
        await self.service.started
        if self.service.failure is not None:
            self.service.failure.raiseException()
        await self.wait_for(
            lambda: self.site.readiness()["ready"] and self.all_fresh() and self.intentions_loaded()
        )
        return self

    def intentions_loaded(self) -> bool:
        """The intentions of every routed service were read from Consul."""
        guard = next(e for e in self.site.engines if e.name == "consul_intentions")
        return {d.service for _, d in self.site.current()[0]} <= guard._source.loaded

    def all_fresh(self) -> bool:
        r = self.site.readiness()
        return all(
            h["last_error"] is None and h["last_success"] is not None
            for group in ("catalog_sources", "certificate_providers")
            for h in r[group].values()
        )

    def client(self, service: str, root: Any = None) -> tuple[Path, Path, Path]:
        """Client files: a leaf for ``service`` from ``root`` and a bundle of every root."""
        leaf = self.double.client_leaf(service, root)
        directory = self.root / "clients"
        cert, key = MeshCA().write(directory, f"{service}-{id(leaf)}", leaf)
        bundle = directory / "roots.pem"
        bundle.write_bytes(b"".join(pki.certificate_pem(r.cert) for r in self.double.roots))
        return cert, key, bundle

    def routes(self) -> set[str]:
        return {sni for sni, _ in self.site.current()[0]}


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coro))


@pytest.fixture
def consul() -> Any:
    double = ConsulDouble(reactor, jitter=False)
    _block(double.start())
    yield double
    _block(double.stop())


@pytest.fixture
def cgw(tmp_path: Path, consul: ConsulDouble) -> Any:
    gw = ConsulGateway(tmp_path / "gw", double=consul)
    yield gw
    if gw.service is not None and gw.service.running:
        _block(gw.stop())


def external(double: ConsulDouble, service: str, port: int, status: str = "passing") -> None:
    """Register an external instance on its own node, as consul-esm users do."""
    node = f"ext-{service}-{port}"
    double.register(
        {
            "Node": node,
            "Address": "127.0.0.1",
            "NodeMeta": {"external-node": "true", "external-probe": "true"},
            "Service": {"ID": f"{service}-{port}", "Service": service, "Port": port},
            "Checks": [
                {
                    "CheckID": f"{service}-{port}-tcp",
                    "Name": "tcp",
                    "Status": status,
                    "ServiceID": f"{service}-{port}",
                }
            ],
        }
    )


def serve(consul: ConsulDouble, upstreams: Any, *services: str) -> dict[str, Any]:
    ups = {}
    for service in services:
        up = ups[service] = upstreams(hello(service.encode()))
        external(consul, service, up.port)
        consul.intentions(service, ("*", "allow"))
    consul.link(GATEWAY, *services)
    return ups


async def _refused(port: int, sni: str, files: tuple[Path, Path, Path]) -> HandshakeRefusedError:
    with pytest.raises(HandshakeRefusedError) as refused:
        await in_thread(tls_connect, port, sni, *files)
    return refused.value


@pytest_twisted.ensureDeferred
async def test_consul_stack_serves_a_client_with_the_doubles_certificates(cgw, consul, upstreams):
    """Catalog, certificates and intentions all from Consul: the client reaches billing,
    sees billing's SPIFFE ID on a leaf signed by Consul's root, and the access log names
    the Consul intention that allowed it. Consul's roots are tagged with the trust
    domain the roots endpoint names."""
    serve(consul, upstreams, "billing")
    await cgw.start()
    files = cgw.client("web")

    def call() -> tuple[bytes, list[str], bytes]:
        with tls_connect(cgw.port, sni_for("billing"), *files) as sock:
            uris = peer_uris(sock)
            der = sock.getpeercert(binary_form=True)
            got = b""
            while chunk := sock.recv(100):
                got += chunk
            return got, uris, der

    got, uris, der = await in_thread(call)
    assert got == b"billing"
    assert uris == [f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/billing"]
    cert = x509.load_der_x509_certificate(der)
    assert cert.issuer == consul.active_root.cert.subject
    await cgw.wait_for(lambda: len(cgw.access_records()) == 1)
    record = cgw.access_records()[0]
    assert record["decision"] == "allow" and record["engine"] == "intentions"
    assert "consul intentions/match" in record["reason"] and "* => default/billing" in record[
        "reason"
    ].replace("default/*", "*")
    ready = cgw.site.readiness()
    assert set(ready["catalog_sources"]) == {"consul_catalog", "consul_intentions"}
    assert ready["certificate_providers"]["consul_certs"]["ok"]
    # Consul's roots vouch for the trust domain /v1/connect/ca/roots names, only.
    roots = [(r.trust_domain, r.certificate) for p in cgw.site.certs for r in p.trust_roots()]
    assert roots == [(TRUST_DOMAIN, consul.active_root.cert)]


@pytest_twisted.ensureDeferred
async def test_link_unlink_and_instance_changes_are_followed(cgw, consul, upstreams):
    """Linking makes a service reachable within one blocking round trip (the blocking
    wait is LONG_WAIT, 30 s: seen within 10 s, the change woke the held query); unlinking
    refuses new connections as unknown SNI; a critical instance is skipped; a new
    instance is used."""
    cgw.wait = f"{LONG_WAIT:g}s"
    serve(consul, upstreams, "billing")
    await cgw.start()
    files = cgw.client("web")

    api = upstreams(hello(b"api"))
    external(consul, "api", api.port)
    consul.intentions("api", ("*", "allow"))
    consul.link(GATEWAY, "billing", "api")
    await cgw.wait_for(lambda: sni_for("api") in cgw.routes(), timeout=LONG_WAIT / 3)
    await cgw.wait_for(cgw.intentions_loaded, timeout=LONG_WAIT / 3)
    assert await in_thread(request, cgw.port, sni_for("api"), files) == b"api"

    consul.link(GATEWAY, "billing")
    await cgw.wait_for(lambda: sni_for("api") not in cgw.routes(), timeout=5)
    await _refused(cgw.port, sni_for("api"), files)
    unlinked = await in_thread(handshake_transcript, cgw.port, sni_for("api"), files)
    assert unlinked.error is not None and not unlinked.certificate_received, unlinked.states
    await cgw.wait_for(lambda: cgw.metric("tgw_no_route_total", reason="unknown_sni") >= 1)

    # Health: billing's only instance goes critical, a second one appears and serves.
    second = upstreams(hello(b"billing-2"))
    first_port = cgw.site.current()[0].lookup(sni_for("billing")).endpoints[0].port
    consul.set_check(f"ext-billing-{first_port}", f"billing-{first_port}-tcp", "critical")
    external(consul, "billing", second.port)

    def healthy_ports() -> set[int]:
        dest = cgw.site.current()[0].lookup(sni_for("billing"))
        return {e.port for e in dest.endpoints if e.health.value == "passing"}

    await cgw.wait_for(lambda: healthy_ports() == {second.port}, timeout=5)
    for _ in range(3):
        assert await in_thread(request, cgw.port, sni_for("billing"), files) == b"billing-2"


@pytest_twisted.ensureDeferred
async def test_root_rotation_is_hitless(cgw, consul, upstreams):
    """After Consul rotates its root: an old connection keeps streaming, leaves come from
    the new root, clients of both roots are accepted while the old one is listed, and
    refused once it is removed."""
    up = upstreams()  # echo
    external(consul, "billing", up.port)
    consul.intentions("billing", ("*", "allow"))
    consul.link(GATEWAY, "billing")
    await cgw.start()
    old_root = consul.active_root
    old_files = cgw.client("web", old_root)
    old = await in_thread(tls_connect, cgw.port, sni_for("billing"), *old_files)
    await in_thread(old.sendall, b"before")
    assert await in_thread(old.recv, 6) == b"before"

    new_root = consul.rotate_root("Consul CA Secondary Cert")

    def leaf_issuer() -> Any:
        leaf = cgw.site.current()[1].leaves[sni_for("billing")]
        return leaf.certificate.issuer

    await cgw.wait_for(
        lambda: len(cgw.site.current()[1].roots) == 2 and leaf_issuer() == new_root.cert.subject,
        timeout=5,
    )
    new_files = cgw.client("web", new_root)
    old_files = cgw.client("web", old_root)  # the bundle now holds both roots

    def echo(files: tuple[Path, Path, Path]) -> bytes:
        with tls_connect(cgw.port, sni_for("billing"), *files) as sock:
            sock.sendall(b"new")
            return sock.recv(3)

    assert await in_thread(echo, new_files) == b"new"
    assert await in_thread(echo, old_files) == b"new"

    def still_streaming() -> bytes:
        old.sendall(b"after rotation")
        return old.recv(100)

    assert await in_thread(still_streaming) == b"after rotation"
    old.close()

    consul.remove_root(old_root.id)
    await cgw.wait_for(lambda: len(cgw.site.current()[1].roots) == 1, timeout=5)

    def rejected(files: tuple[Path, Path, Path]) -> bytes:
        try:
            with tls_connect(cgw.port, sni_for("billing"), *files) as sock:
                sock.sendall(b"x")
                return sock.recv(1)
        except (HandshakeRefusedError, ssl.SSLError, OSError):
            return b""

    assert await in_thread(rejected, old_files) == b""


@pytest_twisted.ensureDeferred
async def test_intention_deny_takes_effect_within_one_round_trip(cgw, consul, upstreams):
    """A deny intention written to Consul refuses the next connection within one blocking
    round trip (seen within 10 s while the blocking wait is LONG_WAIT, 30 s), and the
    access log names the intention."""
    cgw.wait = f"{LONG_WAIT:g}s"
    serve(consul, upstreams, "billing")
    await cgw.start()
    files = cgw.client("web")
    assert await in_thread(request, cgw.port, sni_for("billing"), files) == b"billing"

    consul.intentions("billing", ("web", "deny"), ("*", "allow"))
    engine = next(e for e in cgw.site.engines if e.name == "intentions")
    version = engine.policy_version
    await cgw.wait_for(lambda: engine.policy_version != version, timeout=LONG_WAIT / 3)
    assert await in_thread(request, cgw.port, sni_for("billing"), files) == b""
    await cgw.wait_for(lambda: len(cgw.access_records()) == 2)
    denied = cgw.access_records()[1]
    assert denied["decision"] == "deny" and denied["engine"] == "intentions"
    assert "default/web => default/billing (deny)" in denied["reason"]
    assert "consul intentions/match" in denied["reason"]


@pytest_twisted.ensureDeferred
async def test_consul_restart_and_outage_lose_no_route_and_recover(cgw, consul, upstreams):
    """The double restarts with a lower index, then is down for a while: the gateway keeps
    every route, leaf and intention, shows staleness (metric and /ready), and recovers."""
    serve(consul, upstreams, "billing")
    await cgw.start()
    files = cgw.client("web")
    routes = cgw.routes()

    consul.restart(index=2)
    # Watches notice the lower index, reset, and follow changes made after the restart.
    api = upstreams(hello(b"api"))
    external(consul, "api", api.port)
    consul.intentions("api", ("*", "allow"))
    consul.link(GATEWAY, "billing", "api")
    await cgw.wait_for(lambda: sni_for("api") in cgw.routes(), timeout=8)
    assert routes <= cgw.routes()
    await cgw.wait_for(cgw.intentions_loaded, timeout=8)
    assert await in_thread(request, cgw.port, sni_for("api"), files) == b"api"
    assert await in_thread(request, cgw.port, sni_for("billing"), files) == b"billing"

    await consul.down()
    stale = ("tgw_consul_staleness_seconds", {"plugin": "consul_catalog"})
    await cgw.wait_for(lambda: cgw.metric(stale[0], **stale[1]) > 0, timeout=8)
    ready = cgw.site.readiness()
    assert ready["catalog_sources"]["consul_catalog"]["last_error"]
    assert ready["ready"]  # still serving the last good catalog
    await sleep(0.5)
    assert cgw.routes() == routes | {sni_for("api")}
    assert await in_thread(request, cgw.port, sni_for("billing"), files) == b"billing"
    assert (
        cgw.metric(
            "tgw_consul_errors_total",
            plugin="consul_catalog",
            endpoint="gateway-services",
            kind="unreachable",
        )
        >= 1
    )

    await consul.up()
    consul.link(GATEWAY, "billing")
    await cgw.wait_for(lambda: sni_for("api") not in cgw.routes(), timeout=8)
    await cgw.wait_for(cgw.all_fresh, timeout=8)
    await cgw.wait_for(lambda: cgw.metric(stale[0], **stale[1]) == 0, timeout=8)


@pytest_twisted.ensureDeferred
async def test_two_instances_self_register_and_one_deregisters(tmp_path, consul, upstreams):
    """Two gateways under one name register with the agent as terminating-gateway
    services with distinct IDs; both TCP checks pass; stopping one deregisters it."""
    serve(consul, upstreams, "billing")
    gateways = [
        ConsulGateway(
            tmp_path / f"gw{i}",
            double=consul,
            catalog_options={"register": True, "check_interval": "1s"},
        )
        for i in range(2)
    ]
    try:
        for gw in gateways:
            await gw.start()

        def instances() -> list[dict[str, Any]]:
            return consul.health_of(GATEWAY)

        def all_passing() -> bool:
            found = instances()
            return len(found) == 2 and all(
                c["Status"] == "passing" for i in found for c in i["Checks"]
            )

        await gateways[0].wait_for(all_passing, timeout=8)
        found = instances()
        assert {i["Service"]["Kind"] for i in found} == {"terminating-gateway"}
        assert {i["Service"]["Port"] for i in found} == {gw.port for gw in gateways}
        assert len({i["Service"]["ID"] for i in found}) == 2

        await gateways[0].stop()
        remaining = instances()
        assert [i["Service"]["Port"] for i in remaining] == [gateways[1].port]
    finally:
        for gw in gateways:
            await gw.stop()


@pytest_twisted.ensureDeferred
async def test_a_thousand_linked_services_use_a_bounded_number_of_sockets(cgw, consul):
    """1,000 linked services: every route is built, and the whole stack holds no more
    sockets to the agent than max_connections (16) plus health_watches (128): the
    first 128 services by name have their own blocking health query."""
    count = 1000
    for i in range(count):
        external(consul, f"svc{i:04d}", 10000 + i)
    consul.put_config(
        {"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "*", "Action": "allow"}]}
    )
    consul.link(GATEWAY, *(f"svc{i:04d}" for i in range(count)))
    # No request may time out on a loaded machine: a timeout reconnects, and this test
    # counts every connection the agent accepts.
    slow = {"timeout": "30s"}
    cgw.catalog_options, cgw.certs_options, cgw.intentions_options = slow, slow, slow
    began = time.monotonic()
    await cgw.start()
    await cgw.wait_for(lambda: len(cgw.routes()) == count, timeout=60)
    elapsed = time.monotonic() - began
    await sleep(0.3)
    sockets = consul.open_connections
    print(
        f"\n1000 linked services: {sockets} sockets open to the agent, "
        f"{consul.accepted} accepted in total, {consul.blocked} blocking queries held, "
        f"{len(consul.requests)} requests, ready in {elapsed:.1f}s"
    )
    assert sockets <= 16 + 128
    assert consul.accepted <= 16 + 128
    source = next(s for s in cgw.site.sources if s.name == "consul_catalog")
    assert len(source._health_watches.watched) == 128
