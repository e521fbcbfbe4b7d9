"""Stopping an instance so that nobody notices (gwcore.runtime.drain): withdraw, keep accepting
for ``drain_delay``, drain, and keep the admin endpoint up with ``/ready`` at 503 until
the end. Against the Consul double, which registers, checks and deregisters as a Consul
agent does (``/v1/agent/service/register``, ``/v1/health/service/<name>?passing``)."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gwcore.policy.registration import ready_url
from gwcore.testing.consul import ConsulDouble
from gwcore.testing.consul_checks import http_status
from tests.harness import (
    GATEWAY,
    Gateway,
    in_thread,
    read_all,
    sleep,
    sni_for,
    tls_connect,
)
from tests.plugins.test_consul_gateway import ConsulGateway, serve


class DrainingGateway(ConsulGateway):
    """A :class:`ConsulGateway` that registers itself and keeps accepting ``drain_delay``."""

    drain_delay = "0.5s"
    check = "tcp"

    def write_config(self) -> Path:
        self.catalog_options = {"register": True, "check_interval": "1s", "check": self.check}
        path = super().write_config()
        text = path.read_text().replace(
            "[gateway]\n", f'[gateway]\ndrain_delay = "{self.drain_delay}"\n', 1
        )
        path.write_text(text)
        return path


def passing_instances(double: ConsulDouble) -> list[int]:
    """The ports of the gateway's instances a client would pick now (HTTP, like a client)."""
    # A bare "?passing", as Consul's API documentation writes it.
    url = f"{double.address}/v1/health/service/{GATEWAY}?passing"
    with urllib.request.urlopen(url, timeout=5) as answer:
        entries = json.loads(answer.read())
    return sorted(e["Service"]["Port"] for e in entries)


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


class Clients:
    """Threads that each loop: read the catalog, pick a passing instance at random,
    do one mTLS round trip to billing through it. Every failure is kept."""

    def __init__(self, double: ConsulDouble, files: tuple[Path, Path, Path], n: int = 3) -> None:
        self.double = double
        self.files = files
        self.stop = threading.Event()
        self.ok: dict[int, int] = {}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        rng = random.Random()
        for _ in range(100_000):  # bounded; the test sets stop long before
            if self.stop.is_set():
                return
            port = 0
            try:
                ports = passing_instances(self.double)
                if not ports:
                    self.failures.append("no passing instance in the catalog")
                    time.sleep(0.05)
                    continue
                port = rng.choice(ports)
                cert, key, root = self.files
                with tls_connect(port, sni_for("billing"), cert, key, root, timeout=5) as sock:
                    sock.sendall(b"ping")
                    body = read_all(sock)
                if body != b"billing":
                    self.failures.append(f"{port}: unexpected answer {body!r}")
                else:
                    self.ok[port] = self.ok.get(port, 0) + 1
            except Exception as e:
                self.failures.append(f"{port}: {type(e).__name__}: {e}")

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coro))


@pytest.fixture
def consul() -> Any:
    from twisted.internet import reactor

    double = ConsulDouble(reactor, jitter=False)
    _block(double.start())
    yield double
    _block(double.stop())


async def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await in_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_rolling_restart_of_two_instances_loses_no_client_connection(
    tmp_path, consul, upstreams
):
    """Two instances self-register in the Consul double (own service IDs, TCP checks);
    clients pick a passing instance from the catalog before every connection. Each
    instance in turn is stopped (what SIGTERM does) and replaced by a new one: not one
    client connection fails, and every instance served some."""
    serve(consul, upstreams, "billing")
    gateways = []
    for name in ("a", "b"):
        gw = DrainingGateway(tmp_path / name, double=consul)
        gateways.append(await gw.start())
    ports = sorted(gw.port for gw in gateways)
    await _wait(lambda: passing_instances(consul) == ports, "both instances passing")
    ids = {e["Service"]["ID"] for e in consul.health_of(GATEWAY)}
    assert len(ids) == 2, ids
    clients = Clients(consul, gateways[0].client("web"))
    clients.start()
    served = set(ports)
    try:
        for index, name in enumerate(("a2", "b2")):
            await sleep(0.5)  # traffic on both
            old = gateways[index]
            await old.stop()  # twistd's SIGTERM path
            fresh = DrainingGateway(tmp_path / name, double=consul)
            gateways[index] = await fresh.start()
            served.add(fresh.port)
            want = sorted(g.port for g in gateways)
            await _wait(lambda want=want: passing_instances(consul) == want, f"{name} passing")
        await sleep(0.5)
    finally:
        await in_thread(clients.join)
        for gw in gateways:
            await gw.stop()
    assert clients.failures == [], clients.failures[:5]
    assert set(clients.ok) == served, (clients.ok, served)


@pytest_twisted.ensureDeferred
async def test_stop_deregisters_first_and_ready_answers_503_while_draining(
    tmp_path, consul, upstreams
):
    """On stop the instance leaves the catalog at once, while a client connection is still
    open; the admin endpoint stays up and /ready answers 503 ("draining") for the whole
    drain; the listener keeps accepting during drain_delay; the stop ends when the open
    connection does."""
    serve(consul, upstreams, "billing")
    gw = DrainingGateway(tmp_path / "gw", double=consul)
    gw.drain_delay = "0.4s"
    gw.site_options = {"drain_timeout": "20s"}
    await gw.start()
    await _wait(lambda: passing_instances(consul) == [gw.port], "registered")
    status, body = await in_thread(get, gw.admin_port, "/ready")
    assert (status, body["draining"]) == (200, False)
    cert, key, root = gw.client("web")
    held = await in_thread(tls_connect, gw.port, sni_for("billing"), cert, key, root)
    admin_port, port = gw.admin_port, gw.port
    assert gw.service is not None
    stopped = gw.service.stopService()
    try:
        await _wait(lambda: consul.health_of(GATEWAY) == [], "deregistered", timeout=2)
        # Still accepting: drain_delay has not passed.
        late = await in_thread(tls_connect, port, sni_for("billing"), cert, key, root)
        late.sendall(b"x")
        assert await in_thread(read_all, late) == b"billing"
        late.close()
        await sleep(0.6)  # past drain_delay: the listener is closed, the admin is not
        with pytest.raises(OSError):
            await in_thread(tls_connect, port, sni_for("billing"), cert, key, root, 2)
        status, body = await in_thread(get, admin_port, "/ready")
        assert (status, body["ready"], body["draining"]) == (503, False, True)
        assert not stopped.called
    finally:
        held.sendall(b"x")
        assert await in_thread(read_all, held) == b"billing"
        held.close()
    await stopped
    with pytest.raises(OSError):
        await in_thread(get, admin_port, "/ready")


@pytest_twisted.ensureDeferred
async def test_ready_is_503_during_drain_without_consul(tmp_path, upstreams):
    """A gateway without any catalog registration (file catalog) also answers 503 on
    /ready as soon as it stops, and keeps its admin endpoint until its sites drained."""
    gw = Gateway(tmp_path, gateway_table='drain_delay = "0.3s"')
    await gw.start()
    assert gw.service is not None
    status, _ = await in_thread(get, gw.admin_port, "/ready")
    assert status == 200
    stopped = gw.service.stopService()
    status, body = await in_thread(get, gw.admin_port, "/ready")
    assert (status, body["draining"]) == (503, True)
    await stopped


@pytest_twisted.ensureDeferred
async def test_http_check_on_ready_follows_the_admin_endpoint(tmp_path, consul, upstreams):
    """With ``check = "http"`` the instance registers an HTTP check on the admin
    endpoint's /ready, which the double's agent runs as Consul does (2xx passing,
    otherwise critical): passing while ready, critical once /ready answers 503."""
    serve(consul, upstreams, "billing")
    gw = DrainingGateway(tmp_path / "gw", double=consul)
    gw.check = "http"
    await gw.start()
    await _wait(lambda: passing_instances(consul) == [gw.port], "HTTP check passing")
    ((check,),) = [e["Checks"] for e in consul.health_of(GATEWAY)]
    assert check["Type"] == "http"
    assert f"http://127.0.0.1:{gw.admin_port}/ready" in check["Output"], check
    assert gw.service is not None
    gw.service.draining = True  # /ready now answers 503; the registration stays
    await _wait(lambda: passing_instances(consul) == [], "HTTP check critical", timeout=5)
    ((check,),) = [e["Checks"] for e in consul.health_of(GATEWAY)]
    assert check["Status"] == "critical" and "503" in check["Output"], check
    gw.service.draining = False
    await gw.stop()


def test_ready_url_from_the_admin_endpoint_string():
    """A worker that did not bind the admin endpoint derives /ready from its endpoint
    string; a wildcard bind is reached on loopback; port 0 cannot be derived."""
    assert ready_url("tcp:19000:interface=10.0.0.5") == "http://10.0.0.5:19000/ready"
    assert ready_url("tcp:19000") == "http://127.0.0.1:19000/ready"
    assert ready_url("tcp:19000:interface=0.0.0.0") == "http://127.0.0.1:19000/ready"
    assert ready_url("tcp:0:interface=127.0.0.1") is None
    assert ready_url("unix:/run/tgw/admin.sock") is None
    assert ready_url(None) is None


@pytest.mark.parametrize(
    ("code", "status"),
    [(200, "passing"), (204, "passing"), (429, "warning"), (503, "critical"), (301, "critical")],
)
def test_double_http_check_status_is_consuls(code, status):
    """Consul's CheckHTTP: 2xx passing, 429 warning, anything else critical."""
    assert http_status(code) == status
