"""Shared test harness: an in-process gateway on loopback, real TLS clients, real upstreams.

The gateway runs in the Twisted reactor (pytest-twisted); clients and upstream
servers are plain blocking ``socket``/``ssl`` code (Python's own OpenSSL binding,
an implementation we did not write) run in threads, so every test exercises real
TLS over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from gwcore.contract import pki
from gwcore.plugins.builtin_ca import load_or_create_ca
from gwcore.policy.model import ServiceName
from gwcore.policy.sni import service_sni
from gwcore.runtime.config_check import check_config
from gwcore.runtime.service import GatewayService
from gwcore.testing import TRUST_DOMAIN, MeshCA

DC = "dc1"
GATEWAY = "legacy-gw"

SLOW_TIMEOUT = 300
"""Seconds allowed to a test marked ``@pytest.mark.timeout(SLOW_TIMEOUT)``: those that
start real processes (twistd, worker processes, the benchmark's peers). Every other
test has pyproject's ``timeout`` (60 s)."""


def sample_sum(registry: Any, name: str, labels: dict[str, str]) -> float | None:
    """PromQL's ``sum(name{labels})``: the sum of ``name``'s samples whose labels include
    ``labels``, ``None`` when there is none. A per-service family also carries
    ``namespace``, ``partition`` and ``datacenter``; a test naming only ``service`` means
    every series of that name (one, in these single-namespace tests)."""
    values = [
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(values) if values else None


def sni_for(service: str, datacenter: str = DC, trust_domain: str = TRUST_DOMAIN) -> str:
    return service_sni(ServiceName(service), datacenter, trust_domain)


# --- upstream servers (threads) ---------------------------------------------------


CREATED: list[Upstream] = []
"""Every :class:`Upstream` made, in order (tests/conftest.py checks those of each test)."""


class Upstream:
    """A threaded TCP server on 127.0.0.1 whose behaviour is a function of the socket.

    An exception raised by the handler is kept in ``errors`` and fails the test that
    made the server (see :func:`raise_handler_errors`): a handler that expects a cut
    connection catches it itself.
    """

    def __init__(
        self,
        handler: Callable[[socket.socket, Upstream], None],
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.accepted = 0
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream.accepted += 1
                try:
                    handler(self.request, upstream)
                except BaseException as e:  # reported to the test, not swallowed
                    upstream.errors.append(e)
                finally:
                    upstream.done.set()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        CREATED.append(self)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raise_handler_errors(made: list[Upstream]) -> None:
    """Fail (pytest.fail) naming every handler error of the upstreams in ``made``."""
    errors = [f"upstream :{up.port}: {e!r}" for up in made for e in up.errors]
    if errors:
        pytest.fail("upstream handler raised:\n" + "\n".join(errors), pytrace=False)


def echo(sock: socket.socket, upstream: Upstream) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def hello(body: bytes) -> Callable[[socket.socket, Upstream], None]:
    """Send ``body``, half-close, read until the peer closes. A peer that is already
    gone (reset, or closed before the half-close: ENOTCONN) ends the handler quietly:
    what the client received is what the test checks, and a gateway closing a finished
    connection at teardown is not a failure of the service."""

    def handle(sock: socket.socket, upstream: Upstream) -> None:
        sock.sendall(body)
        try:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except OSError as e:
            if e.errno not in (errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE):
                raise

    return handle


@pytest.fixture
def upstreams() -> Iterator[Callable[..., Upstream]]:
    made: list[Upstream] = []

    def make(
        handler: Callable[[socket.socket, Upstream], None] = echo,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> Upstream:
        up = Upstream(handler, port, host)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def free_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- catalog files ----------------------------------------------------------------


def registration(
    service: str, port: int, address: str = "127.0.0.1", status: str = "passing", node: str = ""
) -> dict:
    node = node or f"ext-{service}-{port}"
    return {
        "Node": node,
        "Address": address,
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


def gateway_entry(*services: dict[str, Any] | str, name: str = GATEWAY) -> dict:
    linked = [{"Name": s} if isinstance(s, str) else s for s in services]
    return {"Kind": "terminating-gateway", "Name": name, "Services": linked}


def intentions(destination: str, *sources: tuple[str, str]) -> dict:
    return {
        "Kind": "service-intentions",
        "Name": destination,
        "Sources": [{"Name": name, "Action": action} for name, action in sources],
    }


def write_json(path: Path, value: Any) -> None:
    """Write atomically, as an operator's tooling would (rename over the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# --- the gateway ------------------------------------------------------------------


@dataclass
class Gateway:
    """An in-process gateway built from a TOML written into ``root``."""

    root: Path
    service: GatewayService | None = None
    ca: MeshCA | None = None
    extra_site: str = ""
    gateway_table: str = ""
    site_options: dict[str, Any] = field(default_factory=dict)
    plugins: list[str] = field(default_factory=lambda: ["file_catalog", "builtin_ca", "intentions"])
    plugin_paths: list[str] = field(default_factory=lambda: ["addons"])
    access_log: str = "access.log"
    freeze_heap: bool = False

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    def write_config(self) -> Path:
        settings = {"handshake_timeout": "5s", "connect_timeout": "2s", **self.site_options}
        options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
        builtin_ca = (
            '[sites.main.builtin_ca]\nca_dir = "ca"' if "builtin_ca" in self.plugins else ""
        )
        text = f"""
[gateway]
admin = "tcp:0:interface=127.0.0.1"
access_log = "{self.access_log}"
state_dir = "state"
plugin_paths = {json.dumps(self.plugin_paths)}
{self.gateway_table}

[sites.main]
listen = "tcp:0:interface=127.0.0.1"
name = "{GATEWAY}"
datacenter = "{DC}"
trust_domain = "{TRUST_DOMAIN}"
plugins = {json.dumps(self.plugins)}
{options}

[sites.main.file_catalog]
paths = ["catalog"]
poll_interval = "0.1s"

{builtin_ca}
{self.extra_site}
"""
        path = self.root / "tgw.toml"
        path.write_text(text)
        return path

    async def start(self) -> Gateway:
        self.catalog.mkdir(parents=True, exist_ok=True)
        cert, key = load_or_create_ca(self.root / "ca", TRUST_DOMAIN)
        self.ca = MeshCA(TRUST_DOMAIN, cert, key)
        path = self.write_config()
        checked = check_config(path)
        assert checked.ok, [str(p) for p in checked.problems]
        self.service = GatewayService(checked, path, reactor, freeze_heap=self.freeze_heap)
        self.service.startService()
        assert self.service.started is not None
        await self.service.started
        if self.service.failure is not None:
            self.service.failure.raiseException()
        assert "main" in self.service.sites, "the gateway did not start"
        return self

    async def stop(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()

    @property
    def site(self) -> Any:
        assert self.service is not None
        return self.service.sites["main"]

    @property
    def port(self) -> int:
        return self.site.port.getHost().port

    @property
    def admin_port(self) -> int:
        assert self.service is not None
        return self.service._ports[0].getHost().port

    def metric(self, name: str, **labels: str) -> float:
        assert self.service is not None
        value = sample_sum(self.service.metrics.registry, name, {"site": "main", **labels})
        return value or 0.0

    def access_records(self) -> list[dict[str, Any]]:
        path = self.root / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def client_files(self, service: str, leaf: Any = None) -> tuple[Path, Path, Path]:
        assert self.ca is not None
        leaf = leaf or self.ca.leaf(service)
        cert, key = self.ca.write(self.root / "clients", f"{service}-{id(leaf)}", leaf)
        root = self.ca.write_root(self.root / "clients" / "root.pem")
        return cert, key, root

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await sleep(0.02)


class TimersOnClock:
    """The real reactor for sockets, a fake clock (``twisted.internet.task.Clock``) for
    timers: code given this as its reactor talks to real servers, and every timeout,
    back-off or refresh it schedules waits exactly as long as the test advances
    ``clock``. Anything else is the real reactor's."""

    def __init__(self, real: Any, clock: Any) -> None:
        self.real = real
        self.clock = clock

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    if gw.service is not None and gw.service.running:
        pytest_twisted.blockon(Deferred.fromCoroutine(gw.stop()))


# --- TLS clients (threads) ----------------------------------------------------------


class HandshakeRefusedError(Exception):
    """The gateway refused the handshake. Whether it sent a certificate first is not
    knowable from Python's ``ssl`` after a failure; :func:`handshake_transcript` says."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def client_context(cert: Path | None, key: Path | None, root: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the mesh checks the SPIFFE URI, below
    ctx.load_verify_locations(str(root))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_connect(
    port: int,
    sni: str | None,
    cert: Path | None,
    key: Path | None,
    root: Path,
    timeout: float = 10.0,
) -> ssl.SSLSocket:
    """Connect and handshake; raise :class:`HandshakeRefusedError` if the gateway refuses.

    Note that in TLS 1.3 a rejected *client* certificate is only reported after
    the client's handshake finished, on the first read.
    """
    ctx = client_context(cert, key, root)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = ctx.wrap_socket(raw, server_hostname=sni, do_handshake_on_connect=False)
    try:
        sock.do_handshake()
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise HandshakeRefusedError(e) from e
    return sock


@dataclass
class Transcript:
    """What a client saw of one handshake, message by message (pyOpenSSL info callback)."""

    states: list[str]
    error: BaseException | None

    @property
    def certificate_received(self) -> bool:
        """Whether a Certificate message from the server reached the client: OpenSSL's
        client enters "read server certificate" only after parsing one (TLS 1.2 and 1.3,
        where it travels encrypted), whatever happened to the handshake afterwards."""
        return any("read server certificate" in s and "verify" not in s for s in self.states)


def handshake_transcript(
    port: int, sni: str | None, files: tuple[Path, Path, Path], timeout: float = 10.0
) -> Transcript:
    """Handshake with pyOpenSSL (client certificate from ``files``, server not verified:
    the point is what the server sends), recording every state OpenSSL's client went
    through; a refused handshake is recorded, not raised."""
    from OpenSSL import SSL

    cert, key, _root = files
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate_chain_file(str(cert))
    ctx.use_privatekey_file(str(key))
    ctx.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    states: list[str] = []
    ctx.set_info_callback(
        lambda conn, _where, _ret: states.append(conn.get_state_string().decode())
    )
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = SSL.Connection(ctx, raw)
    conn.set_connect_state()
    if sni is not None:
        conn.set_tlsext_host_name(sni.encode())
    error: BaseException | None = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:  # the socket has a timeout, so pyOpenSSL sees EAGAIN
                if time.monotonic() > deadline:
                    raise TimeoutError("handshake did not finish") from None
                select.select([raw], [], [], 0.1)
    except (SSL.Error, OSError) as e:
        error = e
    finally:
        raw.close()
    return Transcript(states, error)


def peer_uris(sock: ssl.SSLSocket) -> list[str]:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return pki.uri_sans(x509.load_der_x509_certificate(der))


def read_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def request(port: int, sni: str, files: tuple[Path, Path, Path], payload: bytes = b"ping") -> bytes:
    """One round trip: handshake, send ``payload``, read until the other side closes."""
    cert, key, root = files
    with tls_connect(port, sni, cert, key, root) as sock:
        sock.sendall(payload)
        return read_all(sock)


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    return deferToThread(fn, *args, **kwargs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
