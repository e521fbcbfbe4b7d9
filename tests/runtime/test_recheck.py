"""gwcore.runtime.recheck: every change that can deny closes the live connections it denies
within a second, naming the change in ``close_cause``; a change that cannot deny
lets them drain; a decision in flight when the policy changes is asked again.

Real TLS clients on loopback against the in-process gateway; catalogs are files.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gwcore.net.splice import State
from gwcore.policy.config import SiteConfig
from gwcore.runtime.recheck import CANNOT_DENY, LiveRecheck, can_deny
from gwcore.testing import TRUST_DOMAIN
from tests.harness import (
    Gateway,
    gateway_entry,
    in_thread,
    intentions,
    registration,
    sni_for,
    tls_connect,
    write_json,
)

CLOSE_WITHIN = 1.0


def catalog(directory: Path, up_port: int, *rules: tuple[str, str], linked=("billing",)) -> None:
    write_json(directory / "gateway.json", gateway_entry(*linked))
    write_json(directory / "registrations.json", [registration("billing", up_port)])
    write_json(directory / "intentions.json", [intentions("billing", *rules)] if rules else [])


async def open_echo(gateway: Gateway) -> ssl.SSLSocket:
    """A live, spliced connection web -> billing (proved by one echo)."""
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await in_thread(sock.sendall, b"hi")
    assert await in_thread(sock.recv, 10) == b"hi"
    return sock


def closed_at(sock: ssl.SSLSocket, limit: float = 5.0) -> float | None:
    """When (``time.monotonic()``) the gateway closed ``sock``; None: still open."""
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except (ssl.SSLError, OSError):
        pass  # a reset is a close too
    return time.monotonic()


async def reload_and_expect_close(gateway: Gateway, sock: ssl.SSLSocket, cause: str) -> None:
    closing = in_thread(closed_at, sock)
    await gateway.service.reload()
    applied = time.monotonic()  # starting the new site may take a while on a busy machine
    closed = await closing
    sock.close()
    assert closed is not None, "the live connection was left open"
    assert closed - applied < CLOSE_WITHIN
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == cause
    assert gateway.metric("tgw_downstream_rejected_total", reason=cause) == 1


def _default_policy(gateway: Gateway, up_port: int) -> None:
    gateway.site_options["default_policy"] = "deny"


def _engine_stack(gateway: Gateway, up_port: int) -> None:
    catalog(gateway.catalog, up_port, ("web", "deny"))  # read once intentions is stacked
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions"]


def _route(gateway: Gateway, up_port: int) -> None:
    catalog(gateway.root / "other", up_port, linked=("payments",))
    gateway.write_config()
    path = gateway.root / "tgw.toml"
    path.write_text(path.read_text().replace('paths = ["catalog"]', 'paths = ["other"]'))


def _trust_root(gateway: Gateway, up_port: int) -> None:
    gateway.write_config()
    path = gateway.root / "tgw.toml"
    path.write_text(path.read_text().replace('ca_dir = "ca"', 'ca_dir = "ca-rotated"'))


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (_default_policy, "policy_revoked"),
        (_engine_stack, "policy_revoked"),
        (_route, "route_removed"),
        (_trust_root, "trust_root_removed"),
    ],
    ids=["default_policy", "engine_stack", "removed_route", "removed_trust_root"],
)
@pytest_twisted.ensureDeferred
async def test_a_reload_that_tightens_policy_closes_live_connections_within_a_second(
    gateway, upstreams, change, cause
):
    """SIGHUP's reload with a stricter default policy, an engine stack that now denies,
    a catalog without the route or another CA: the connection opened before it is
    closed within 1 s, and ``close_cause`` (and the rejected counter) names the change."""
    up = upstreams()
    gateway.site_options["default_policy"] = "allow"
    gateway.plugins = ["file_catalog", "builtin_ca"]
    catalog(gateway.catalog, up.port)
    await gateway.start()
    sock = await open_echo(gateway)
    change(gateway, up.port)
    if change in (_default_policy, _engine_stack):
        gateway.write_config()
    await reload_and_expect_close(gateway, sock, cause)


@pytest_twisted.ensureDeferred
async def test_a_reload_that_cannot_deny_lets_live_connections_drain_and_still_rechecks_them(
    gateway, upstreams
):
    """Listener tuning (handshake and idle timeouts) replaces the site but leaves the old
    connection open; a later intention edit still closes it (the new site adopted it)."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    old_site = gateway.site
    sock = await open_echo(gateway)
    gateway.site_options.update(handshake_timeout="6s", idle_timeout="2h")
    gateway.write_config()
    await gateway.service.reload()
    assert gateway.site is not old_site
    await in_thread(sock.sendall, b"still")
    assert await in_thread(sock.recv, 10) == b"still"
    assert gateway.access_records() == []

    closing = in_thread(closed_at, sock)
    write_json(gateway.catalog / "intentions.json", [intentions("billing", ("web", "deny"))])
    written = time.monotonic()
    closed = await closing
    sock.close()
    assert closed is not None and closed - written < 2.0  # the file is polled every 0.1 s
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "policy_revoked"


@pytest_twisted.ensureDeferred
async def test_unlinking_a_service_closes_its_live_connections_within_a_second(gateway, upstreams):
    """The terminating-gateway entry stops linking billing: its open connection is closed
    (``route_removed``) within a second of the catalog change going live."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    sock = await open_echo(gateway)
    write_json(gateway.catalog / "gateway.json", gateway_entry("payments"))
    billing = sni_for("billing")
    await gateway.wait_for(lambda: gateway.site.current()[0].lookup(billing) is None)
    live = time.monotonic()
    closed = await in_thread(closed_at, sock)
    sock.close()
    assert closed is not None and closed - live < CLOSE_WITHIN
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "route_removed"
    assert gateway.metric("tgw_downstream_rejected_total", reason="route_removed") == 1


@pytest_twisted.ensureDeferred
async def test_removing_a_site_by_reload_closes_its_live_connections(gateway, upstreams):
    """A reload without the site takes its routes away: the connection is closed at once."""
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    sock = await open_echo(gateway)
    path = gateway.root / "tgw.toml"
    text = path.read_text().replace("[sites.main", "[sites.renamed")
    path.write_text(text)
    closing = in_thread(closed_at, sock)
    await gateway.service.reload()
    applied = time.monotonic()
    closed = await closing
    sock.close()
    assert closed is not None and closed - applied < CLOSE_WITHIN
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "route_removed"


SLOW_ENGINE = """
from twisted.internet.defer import Deferred

from gwcore.policy.model import Decision, Verdict


class Slow:
    name = "slow"
    policy_version = "1"

    def __init__(self):
        self.held = []

    def start(self, changed):
        return None

    def stop(self):
        for d in self.held:
            if not d.called:
                d.callback(Decision(Verdict.ABSTAIN, "slow", "stopping"))

    def authorize(self, request):
        if self.held:  # only the first decision is held
            return Decision(Verdict.ABSTAIN, "slow", "at once")
        d = Deferred()
        self.held.append(d)
        return d


def tgw_authorization_engines(site):
    return [Slow()]
"""


@pytest_twisted.ensureDeferred
async def test_a_decision_in_flight_when_the_policy_changes_is_asked_again(
    gateway, upstreams, tmp_path: Path
):
    """An engine is still deciding when an intention edit denies web -> billing: when
    it answers, the connection is decided under the new policy (denied), not let
    through on the answers given under the old one."""
    from gwcore.policy.model import Decision, Verdict

    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "slow.py").write_text(SLOW_ENGINE)
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "slow"]
    up = upstreams()
    catalog(gateway.catalog, up.port, ("web", "allow"))
    await gateway.start()
    intentions_engine, slow = gateway.site.engines
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await gateway.wait_for(lambda: bool(slow.held))
    version = intentions_engine.policy_version
    write_json(gateway.catalog / "intentions.json", [intentions("billing", ("web", "deny"))])
    await gateway.wait_for(lambda: intentions_engine.policy_version != version)
    slow.held[0].callback(Decision(Verdict.ABSTAIN, "slow", "late"))

    def exchange() -> bytes | None:
        try:
            sock.sendall(b"hi")
            return sock.recv(10)
        except (ssl.SSLError, OSError):
            return None

    assert await in_thread(exchange) in (b"", None)
    sock.close()
    assert up.accepted == 0
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "denied"


def _site_config(**changes: Any) -> tuple[SiteConfig, SiteConfig]:
    base = SiteConfig("main", "tgw.toml", Path("."), "tcp:0", "gw", "dc1", "example.consul")
    return base, replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "denies"),
    [
        ({"handshake_timeout": 1.0, "idle_timeout": 5.0, "listen": "tcp:1"}, False),
        ({"lb_policy": "random", "drain_timeout": 0.0, "dns_timeout": 1.0}, False),
        ({"default_policy": "allow"}, True),
        ({"plugins": ("intentions",)}, True),
        ({"trust_domain": "other.consul"}, True),
        ({"extra_trust_domains": ("peer.consul",)}, True),
        ({"sections": {"intentions": {"x": 1}}}, True),
    ],
)
def test_only_listener_tuning_cannot_deny(changes: dict[str, Any], denies: bool) -> None:
    """The reload classifier: a field not known to be harmless counts as able to deny."""
    old, new = _site_config(**changes)
    assert can_deny(old, new) is denies
    assert "default_policy" not in CANNOT_DENY and "sections" not in CANNOT_DENY


class _RoutedSite:
    """What LiveRecheck reads of a site: its connections, routes, metrics and name."""

    def __init__(self, *destinations: Any) -> None:
        from gwcore.contract.metrics import GatewayMetrics
        from gwcore.policy.routes import RouteTable

        self.name = "main"
        self.active: set[Any] = set()
        self.metrics = GatewayMetrics()
        self.routes = RouteTable.build(destinations, "dc1", TRUST_DOMAIN, "v1")
        self.recheck = LiveRecheck(self)  # type: ignore[arg-type]

    def current(self) -> tuple[Any, None]:
        return self.routes, None


class _PassThrough:
    """A mesh site's connection: spliced, but it has no client identity at all."""

    state = State.SPLICING

    def close(self, cause: str) -> None:
        raise AssertionError("a pass-through connection is never re-checked")


def test_an_sni_now_routing_to_another_service_closes_its_connections() -> None:
    """The SNI a connection arrived with now leads to payments, not billing: closed as
    route_changed; a connection still routed as before, and a pass-through connection
    without identity, are left alone."""
    from tests.runtime.test_site import (
        BILLING,
        PAYMENTS,
        StubConnection,
        destination,
        identity,
        sni,
    )

    site = _RoutedSite(destination(BILLING, "10.0.0.1"), destination(PAYMENTS, "10.0.0.2"))
    moved = StubConnection(identity("web"), sni=sni(PAYMENTS))  # was routed to billing
    kept = StubConnection(identity("web"))
    site.active |= {moved, kept, _PassThrough()}
    site.recheck.routes_changed()
    assert moved.closed == ["route_changed"] and kept.closed == []
    value = site.metrics.registry.get_sample_value(
        "tgw_downstream_rejected_total", {"site": "main", "reason": "route_changed"}
    )
    assert value == 1


@pytest_twisted.ensureDeferred
async def test_a_trust_root_removed_by_rotation_closes_the_connections_it_issued(
    gateway, upstreams
):
    """file_certs drops a root from roots.pem: the connection whose client certificate
    chains only to that root is closed (trust_root_removed) within a second of the new
    roots going live; a connection from the remaining root keeps streaming."""
    from gwcore.contract import pki
    from gwcore.plugins.builtin_ca import load_or_create_ca
    from gwcore.testing import MeshCA

    up = upstreams()
    catalog(gateway.catalog, up.port, ("*", "allow"))
    certs = gateway.root / "certs"
    gateway.plugins = ["file_catalog", "file_certs", "intentions"]
    gateway.extra_site = f"""
[sites.main.file_certs]
roots = ["{certs / "roots.pem"}"]
poll_interval = "0.05s"
[sites.main.file_certs.leaves]
billing = {{ cert = "{certs / "billing.pem"}", key = "{certs / "billing-key.pem"}" }}
"""
    ca = MeshCA(TRUST_DOMAIN, *load_or_create_ca(gateway.root / "ca", TRUST_DOMAIN))
    retired = MeshCA(TRUST_DOMAIN)
    ca.write(certs, "billing", ca.leaf("billing"))
    (certs / "roots.pem").write_bytes(
        pki.certificate_pem(ca.cert) + pki.certificate_pem(retired.cert)
    )
    await gateway.start()
    kept = await open_echo(gateway)
    cert, key = retired.write(gateway.root / "retired", "web", retired.leaf("web"))
    server_root = ca.write_root(gateway.root / "retired" / "root.pem")
    doomed = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, server_root)
    await in_thread(doomed.sendall, b"hi")
    assert await in_thread(doomed.recv, 10) == b"hi"

    (certs / "roots.pem").write_bytes(pki.certificate_pem(ca.cert))
    await gateway.wait_for(lambda: len(gateway.site.current()[1].roots) == 1)
    live = time.monotonic()
    closed = await in_thread(closed_at, doomed)
    doomed.close()
    assert closed is not None and closed - live < CLOSE_WITHIN
    await in_thread(kept.sendall, b"still")
    assert await in_thread(kept.recv, 10) == b"still"
    kept.close()
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
    assert gateway.access_records()[0]["close_cause"] == "trust_root_removed"
    assert gateway.metric("tgw_downstream_rejected_total", reason="trust_root_removed") == 1


@pytest_twisted.ensureDeferred
async def test_a_root_moved_to_a_peer_bundle_closes_the_local_clients_it_issued(gateway, upstreams):
    """Issue 16 §1: a reload that moves a root (one without a spiffe:// URI SAN) from
    the local ``roots`` to the peer's ``trust_bundles`` takes it out of the local
    bundle, though the site still trusts it: the local identity it issued is closed
    within a second as ``trust_root_removed``; one from the builtin CA keeps
    streaming."""
    from gwcore.testing import MeshCA
    from tests.net.test_client_trust import ca_without_spiffe_uri

    up = upstreams()
    catalog(gateway.catalog, up.port, ("*", "allow"))
    other = MeshCA(TRUST_DOMAIN, *ca_without_spiffe_uri())
    other.write_root(gateway.root / "other.pem")
    gateway.plugins = ["file_catalog", "builtin_ca", "file_certs", "intentions"]
    gateway.site_options["extra_trust_domains"] = ["peer.consul"]
    gateway.extra_site = '[sites.main.file_certs]\nroots = ["other.pem"]\n'
    await gateway.start()
    kept = await open_echo(gateway)
    cert, key, root = gateway.client_files("web", other.leaf("web"))
    moved = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await in_thread(moved.sendall, b"hi")
    assert await in_thread(moved.recv, 10) == b"hi"

    gateway.extra_site = '[sites.main.file_certs.trust_bundles]\n"peer.consul" = ["other.pem"]\n'
    gateway.write_config()
    closing = in_thread(closed_at, moved)
    await gateway.service.reload()
    applied = time.monotonic()
    closed = await closing
    moved.close()
    assert closed is not None and closed - applied < CLOSE_WITHIN
    assert other.cert in gateway.site.trust_roots(), "still trusted, for the peer only"
    await in_thread(kept.sendall, b"still")
    assert await in_thread(kept.recv, 10) == b"still"
    kept.close()
    await gateway.wait_for(lambda: len(gateway.access_records()) >= 1)
    assert gateway.access_records()[0]["close_cause"] == "trust_root_removed"


@pytest_twisted.ensureDeferred
async def test_a_decision_in_flight_across_a_reload_is_asked_of_the_new_site(
    gateway, upstreams, tmp_path: Path
):
    """A reload replaces the site (default_policy allow -> deny, the slow engine dropped)
    while an engine of the old site is still deciding: the connection is decided by the
    new site's policy (denied) when the old answer arrives."""
    from gwcore.policy.model import Decision, Verdict

    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "slow.py").write_text(SLOW_ENGINE)
    gateway.plugins = ["file_catalog", "builtin_ca", "slow"]
    gateway.site_options["default_policy"] = "allow"
    up = upstreams()
    catalog(gateway.catalog, up.port)
    await gateway.start()
    [slow] = gateway.site.engines
    cert, key, root = gateway.client_files("web")
    sock = await in_thread(tls_connect, gateway.port, sni_for("billing"), cert, key, root)
    await gateway.wait_for(lambda: bool(slow.held))
    gateway.plugins = ["file_catalog", "builtin_ca"]
    gateway.site_options["default_policy"] = "deny"
    gateway.write_config()
    await gateway.service.reload()
    slow.held[0].callback(Decision(Verdict.ABSTAIN, "slow", "late"))

    def exchange() -> bytes | None:
        try:
            sock.sendall(b"hi")
            return sock.recv(10)
        except (ssl.SSLError, OSError):
            return None

    assert await in_thread(exchange) in (b"", None)
    sock.close()
    assert up.accepted == 0
    await gateway.wait_for(lambda: len(gateway.access_records()) == 1)
    assert gateway.access_records()[0]["close_cause"] == "denied"


def test_a_decision_outrun_by_policy_changes_every_time_is_a_deny(tmp_path: Path) -> None:
    """Each answer arrives after yet another policy change: the site asks again, at most
    MAX_ROUNDS times, then denies rather than allow on a superseded policy (in memory)."""
    from gwcore.policy.model import Verdict
    from gwcore.runtime.recheck import MAX_ROUNDS
    from tests.runtime.test_site import StubConnection, identity, started

    site = started(
        tmp_path,
        ["fake"],
        {"fake": {"engines": [{"name": "e1", "mode": "later-allow"}], "certs": True}},
    )
    [engine] = site.engines
    conn = StubConnection(identity("web"), state=State.AUTHORIZING)
    conn.routes, conn.material = site.current()  # accepted under the current routes
    answers: list[Any] = []
    site.authorize(conn).addCallback(answers.append)  # type: ignore[arg-type]
    for _ in range(MAX_ROUNDS):
        assert answers == []
        engine.changed()  # the policy changes while the engine is deciding ...
        engine.later[-1].callback(None)  # ... and then it answers allow
    [final] = answers
    assert final.verdict is Verdict.DENY and final.engine == "recheck"
    assert len(engine.requests) == MAX_ROUNDS
