"""Tests for gwcore.runtime.site's control plane: combining engine decisions, merging catalog
sources in stack order, notifying subscribers, re-checking open connections when policy
changes, and two sites with different stacks in one process.

Providers come from drop-in plugin files written to ``tmp_path`` and loaded through the
real plugin path; the reactor is a ``MemoryReactorClock``, so ``Site.start`` runs in
memory and time only moves when a test advances it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from gwcore.contract.events import ConnectionInfo
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.plugin_host import PluginStack
from gwcore.contract.providers import AuthzRequest, CatalogView
from gwcore.net.terminator import State
from gwcore.policy.config import GatewayConfig, parse_config
from gwcore.policy.model import (
    CatalogSnapshot,
    Decision,
    Destination,
    Endpoint,
    Intention,
    ServiceName,
    SpiffeID,
    Verdict,
)
from gwcore.policy.sni import service_sni
from gwcore.runtime.site import FIRST_SNAPSHOT_TIMEOUT, Site
from gwcore.testing import TRUST_DOMAIN
from tests.harness import sample_sum

# A drop-in whose providers are described by its own section, [sites.KEY.<file stem>]:
#   engines = [{name = "e1", mode = "allow"}]  # allow | deny | abstain | raise | hang
#   sources = ["src-a"]                        # sources the test publishes through
#   silent_sources = ["slow"]                  # sources that never finish starting
#   certs = true                               # a certificate provider with its own CA
FAKES = """
from pathlib import Path

from twisted.internet.defer import Deferred

from gwcore.policy.model import Decision, Verdict
from gwcore.contract.providers import SourceHealth, TrustRoot
from gwcore.testing import MeshCA

NAME = Path(__file__).stem


class Engine:
    policy_version = "1"

    def __init__(self, name, mode):
        self.name = name
        self.mode = mode
        self.by_source = {}  # per source service name, overrides mode
        self.requests = []
        self.later = []
        self.changed = None
        self.bare = False
        self.domain = ""  # tag the roots with this trust domain instead of the CA's

    def start(self, changed):
        self.changed = changed

    def stop(self):
        self.changed = None

    def authorize(self, request):
        self.requests.append(request)
        mode = self.by_source.get(request.source.name, self.mode)
        if mode == "raise":
            raise RuntimeError(self.name + " exploded")
        if mode == "hang":
            return Deferred()
        if mode.startswith("later-"):  # answered when the test fires self.later
            self.later.append(Deferred())
            verdict = mode.removeprefix("later-")
            if verdict == "raise":
                return self.later[-1].addCallback(lambda _: 1 / 0)
            if verdict == "none":  # fires with what the test gives it
                return self.later[-1]
            return self.later[-1].addCallback(
                lambda _: Decision(Verdict(verdict), self.name, self.name + " says " + verdict)
            )
        if mode.startswith("coroutine-"):
            verdict = mode.removeprefix("coroutine-")

            async def decide():
                return Decision(Verdict(verdict), self.name, self.name + " says " + verdict)

            return decide()
        if mode == "none":
            return None
        if mode == "wrong":
            return {"allow": True}
        return Decision(Verdict(mode), self.name, self.name + " says " + mode)


class Source:
    def __init__(self, name, silent=False):
        self.name = name
        self.silent = silent
        self.publish = None

    def start(self, publish):
        self.publish = publish
        return Deferred() if self.silent else None

    def stop(self):
        self.publish = None

    def health(self):
        return SourceHealth(last_success=0.0)


class Certs:
    def __init__(self):
        self.name = NAME + "-certs"
        self.ca = MeshCA()
        self.leaves = {}
        self.prepared = []
        self.hold = False  # prepare returns a Deferred the test fires
        self.held = []
        self.changed = None
        self.bare = False

    def start(self, changed):
        self.changed = changed

    def stop(self):
        pass

    def prepare(self, services):
        self.prepared.append(frozenset(services))
        for service in services:
            if service not in self.leaves:
                self.leaves[service] = self.ca.leaf(service.name)
        if self.hold:
            d = Deferred()
            self.held.append(d)
            return d
        return None

    def leaf(self, service):
        return self.leaves.get(service)

    def trust_roots(self):
        if self.bare:  # the 0.1 contract: no trust domain
            return [self.ca.cert]
        return [TrustRoot(self.ca.cert, self.domain or self.ca.trust_domain)]

    def health(self):
        return SourceHealth(last_success=0.0)


def tgw_authorization_engines(site):
    section = site.plugin_config(NAME)
    return [Engine(e["name"], e["mode"]) for e in section.get("engines", [])]


def tgw_catalog_sources(site):
    section = site.plugin_config(NAME)
    return [Source(n) for n in section.get("sources", [])] + [
        Source(n, silent=True) for n in section.get("silent_sources", [])
    ]


def tgw_certificate_providers(site):
    if not site.plugin_config(NAME).get("certs", False):
        return []
    certs = Certs()
    certs.bare = site.plugin_config(NAME).get("bare", False)
    certs.domain = site.plugin_config(NAME).get("domain", "")
    return [certs]
"""

ALLOW_ALL = """
from gwcore.policy.model import Decision, Verdict


class AllowAll:
    name = "allow_all"
    policy_version = "1"

    def start(self, changed):
        pass

    def stop(self):
        pass

    def authorize(self, request):
        return Decision(Verdict.ALLOW, self.name, "allows everything")


def tgw_authorization_engines(site):
    return [AllowAll()]
"""

BILLING = ServiceName("billing")
PAYMENTS = ServiceName("payments")


def sni(service: ServiceName) -> str:
    return service_sni(service, "dc1", TRUST_DOMAIN)


def destination(service: ServiceName, *addresses: str) -> Destination:
    return Destination(service, "dc1", tuple(Endpoint(a, 8080) for a in addresses))


def snapshot(source: str, version: str, *destinations: Destination, **kw: Any) -> CatalogSnapshot:
    return CatalogSnapshot(source, tuple(destinations), version=version, **kw)


def identity(service: str) -> SpiffeID:
    return SpiffeID(TRUST_DOMAIN, "default", "dc1", service)


def authz_request(site: Site, source: str = "web", service: ServiceName = BILLING) -> AuthzRequest:
    return AuthzRequest(
        site=site.name,
        gateway_name="legacy-gw",
        datacenter="dc1",
        source=identity(source),
        destination=destination(service),
        sni=sni(service),
        client_address="127.0.0.1",
        client_port=50000,
        gateway_address="127.0.0.1",
        gateway_port=8443,
    )


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired successfully."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def site_table(port: int, plugins: list[str], **options: Any) -> dict[str, Any]:
    return {
        "listen": f"tcp:{port}:interface=127.0.0.1",
        "name": "legacy-gw",
        "datacenter": "dc1",
        "trust_domain": TRUST_DOMAIN,
        "plugins": plugins,
        **options,
    }


def gateway_config(base: Path, sites: dict[str, dict[str, Any]]) -> GatewayConfig:
    """Write the drop-ins any site names (``fake*`` and ``allow_all``), then parse."""
    addons = base / "addons"
    addons.mkdir(exist_ok=True)
    for table in sites.values():
        for name in table["plugins"]:
            if name.startswith("fake"):
                (addons / f"{name}.py").write_text(textwrap.dedent(FAKES))
            elif name == "allow_all":
                (addons / f"{name}.py").write_text(textwrap.dedent(ALLOW_ALL))
    data = {"gateway": {"plugin_paths": ["addons"], "access_log": ""}, "sites": sites}
    return parse_config(data, str(base / "tgw.toml"), base)


def build_site(config: GatewayConfig, key: str, reactor: MemoryReactorClock | None = None) -> Site:
    site_config = config.site(key)
    return Site(
        site_config,
        config,
        reactor=reactor or MemoryReactorClock(),
        metrics=GatewayMetrics(),
        access_log=[].append,
        stack=PluginStack(site_config, config),
    )


def started(
    base: Path, plugins: list[str], sections: dict[str, dict[str, Any]], **options: Any
) -> Site:
    """A started site ``main`` (listening on the memory reactor)."""
    config = gateway_config(base, {"main": site_table(8443, plugins, **sections, **options)})
    site = build_site(config, "main")
    result_of(Deferred.fromCoroutine(site.start()))
    assert site.listening
    return site


def metric(site: Site, name: str, **labels: str) -> float:
    value = sample_sum(site.metrics.registry, name, {"site": site.name, **labels})
    return value or 0.0


# --- deciding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "verdict", "engine"),
    [
        ("allow", "deny", Verdict.DENY, "e2"),
        ("deny", "allow", Verdict.DENY, "e1"),
        ("deny", "deny", Verdict.DENY, "e1"),
        ("allow", "abstain", Verdict.ALLOW, "e1"),
        ("abstain", "allow", Verdict.ALLOW, "e2"),
        ("abstain", "abstain", Verdict.DENY, "default"),
        ("raise", "allow", Verdict.DENY, "e1"),
        ("allow", "raise", Verdict.DENY, "e2"),
        ("allow", "later-deny", Verdict.DENY, "e2"),
        ("later-allow", "deny", Verdict.DENY, "e2"),
        ("later-allow", "abstain", Verdict.ALLOW, "e1"),
        ("abstain", "later-raise", Verdict.DENY, "e2"),
        ("coroutine-allow", "later-allow", Verdict.ALLOW, "e1"),
    ],
)
def test_decide_is_deny_overrides_and_an_engine_error_is_a_deny(
    tmp_path: Path, first: str, second: str, verdict: Verdict, engine: str
) -> None:
    """Deny overrides, in engine order, whether engines answer at once, later (a
    Deferred) or as a coroutine; nothing is decided until the last one answers, and
    an engine that raises (now or later) is a deny by that engine."""
    engines = [{"name": "e1", "mode": first}, {"name": "e2", "mode": second}]
    site = started(
        tmp_path,
        ["fake", "fake_certs"],
        {"fake": {"engines": engines}, "fake_certs": {"certs": True}},
    )
    decisions: list[Decision] = []
    site.decide(authz_request(site)).addCallback(decisions.append)
    later = [d for stack_engine in site.engines for d in stack_engine.later]
    assert (decisions == []) == bool(later)
    for d in later:
        d.callback(None)
    [decision] = decisions
    assert (decision.verdict, decision.engine) == (verdict, engine)
    if first == "raise" or second == "raise":
        assert decision.reason == f"engine error: RuntimeError: {engine} exploded"
    if "raise" in first + second:
        assert metric(site, "tgw_authz_errors_total", engine=engine, reason="exception") == 1
    labels = {"service": "billing", "engine": engine, "decision": verdict.value}
    assert metric(site, "tgw_authz_decisions_total", **labels) == 1


def test_engines_that_answer_at_once_are_decided_at_once(tmp_path: Path) -> None:
    """The handshake's usual path: when every engine answers synchronously the
    decision is already there when ``decide`` returns (no reactor turn, no timeout
    left scheduled)."""
    engines = [{"name": "e1", "mode": "abstain"}, {"name": "e2", "mode": "allow"}]
    site = started(
        tmp_path,
        ["fake", "fake_certs"],
        {"fake": {"engines": engines}, "fake_certs": {"certs": True}},
    )
    timers = len(site.reactor.getDelayedCalls())
    pending = site.decide(authz_request(site))
    assert pending.called
    decision = result_of(pending)
    assert (decision.verdict, decision.engine) == (Verdict.ALLOW, "e2")
    assert len(site.reactor.getDelayedCalls()) == timers


def test_authorization_requests_describe_the_connection_and_the_listener(
    tmp_path: Path,
) -> None:
    """What an engine is asked about a connection: its identity, destination, SNI and
    client, and the connection's own local address (not the listener's, which may be a
    wildcard)."""
    site = started(
        tmp_path,
        ["fake", "fake_certs"],
        {"fake": {"engines": [{"name": "e1", "mode": "allow"}]}, "fake_certs": {"certs": True}},
    )
    conn = SimpleNamespace(
        identity=identity("web"),
        destination=destination(BILLING),
        sni=sni(BILLING),
        info=ConnectionInfo("main", 1, "127.0.0.9", 40000, 0.0),
        transport=SimpleNamespace(getHost=lambda: IPv4Address("TCP", "127.0.0.5", 8443)),
        state=State.AUTHORIZING,
    )
    conn.routes, conn.material = site.current()  # accepted under the current routes
    for _ in range(2):
        assert result_of(site.authorize(conn)).allowed  # type: ignore[arg-type]
    [engine] = site.engines
    for request in engine.requests:
        assert (request.source, request.destination.service, request.sni) == (
            identity("web"),
            BILLING,
            sni(BILLING),
        )
        assert (request.client_address, request.client_port) == ("127.0.0.9", 40000)
        assert (request.gateway_address, request.gateway_port) == ("127.0.0.5", 8443)


def test_an_engine_that_never_answers_is_a_deny_after_authz_timeout(tmp_path: Path) -> None:
    engines = [{"name": "slow", "mode": "hang"}, {"name": "quick", "mode": "allow"}]
    site = started(
        tmp_path,
        ["fake"],
        {"fake": {"engines": engines, "certs": True}},
        authz_timeout="0.5s",
    )
    decisions: list[Decision] = []
    site.decide(authz_request(site)).addCallback(decisions.append)
    site.reactor.advance(0.49)
    assert decisions == [], "the quick allow must not win while an engine is still deciding"
    site.reactor.advance(0.01)
    [decision] = decisions
    assert (decision.verdict, decision.engine) == (Verdict.DENY, "slow")
    assert decision.reason.startswith("engine error: ")
    assert metric(site, "tgw_authz_errors_total", engine="slow", reason="timeout") == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("raise", "exception"),
        ("hang", "timeout"),
        ("none", "none"),
        ("wrong", "wrong_type"),
        ("later-none", "none"),
        ("later-raise", "exception"),
    ],
)
def test_a_misbehaving_engine_is_a_deny_counted_and_named(
    tmp_path: Path, mode: str, reason: str
) -> None:
    """Every kind of engine misbehaviour (an exception, no answer in time, ``None``, an
    answer that is not a Decision, a Deferred firing ``None``) goes through the
    fail-closed path: a deny by that engine even though another engine allowed, counted
    in ``tgw_authz_errors_total`` with its reason, and one warning naming the engine."""
    engines = [{"name": "odd", "mode": mode}, {"name": "fine", "mode": "allow"}]
    site = started(tmp_path, ["fake"], {"fake": {"engines": engines, "certs": True}})
    logged: list[dict[str, Any]] = []
    site.log.observer = logged.append  # type: ignore[misc]
    decisions: list[Decision] = []
    site.decide(authz_request(site)).addCallback(decisions.append)
    for d in [d for engine in site.engines for d in engine.later]:
        d.callback(None)
    site.reactor.advance(site.config.authz_timeout)
    [decision] = decisions
    assert (decision.verdict, decision.engine) == (Verdict.DENY, "odd")
    assert metric(site, "tgw_authz_errors_total", engine="odd", reason=reason) == 1
    warnings = [e for e in logged if e["log_level"] is LogLevel.warn]
    [warning] = warnings
    assert (warning["engine"], warning["why"]) == ("odd", reason)
    debug = [e for e in logged if e["log_level"] is LogLevel.debug and "log_failure" in e]
    assert len(debug) == 1, "one traceback, at debug level"


def test_no_engines_means_the_default_policy_decides(tmp_path: Path) -> None:
    site = started(tmp_path, ["fake"], {"fake": {"certs": True}}, default_policy="allow")
    decision = result_of(site.decide(authz_request(site)))
    assert (decision.verdict, decision.engine) == (Verdict.ALLOW, "default")
    assert "no engines in the stack" in decision.reason


# --- catalog sources ------------------------------------------------------------------


@pytest.mark.parametrize("order", [["fake_a", "fake_b"], ["fake_b", "fake_a"]])
def test_sources_merge_in_stack_order(tmp_path: Path, order: list[str]) -> None:
    """The first source (in stack order) that names a service defines it."""
    sections = {
        "fake_a": {"sources": ["src-a"], "certs": True},
        "fake_b": {"sources": ["src-b"]},
    }
    site = started(tmp_path, order, sections)
    sources = {s.name: s for s in site.sources}
    assert [s.name for s in site.sources] == [n.replace("fake_", "src-") for n in order]
    sources["src-a"].publish(snapshot("src-a", "1", destination(BILLING, "10.0.0.1")))
    sources["src-b"].publish(
        snapshot("src-b", "1", destination(BILLING, "10.0.0.2"), destination(PAYMENTS, "10.0.0.3"))
    )
    site.reactor.advance(0)
    routes, tls = site.current()
    billing = routes.lookup(sni(BILLING))
    assert billing is not None
    assert billing.endpoints[0].address == ("10.0.0.1" if order[0] == "fake_a" else "10.0.0.2")
    assert routes.lookup(sni(PAYMENTS)) is not None
    assert set(tls.by_sni) == {sni(BILLING), sni(PAYMENTS)}
    assert metric(site, "tgw_routes") == 2


def test_a_snapshot_goes_live_on_the_next_turn_and_a_repeated_version_is_ignored(
    tmp_path: Path,
) -> None:
    site = started(tmp_path, ["fake"], {"fake": {"sources": ["src"], "certs": True}})
    [source], [certs] = site.sources, site.certs
    before = site.current()
    source.publish(snapshot("src", "1", destination(BILLING, "10.0.0.1")))
    assert site.current() == before, "nothing changes under a running callback"
    site.reactor.advance(0)
    routes, _ = site.current()
    assert len(routes) == 1
    prepared = len(certs.prepared)
    source.publish(snapshot("src", "1", destination(BILLING, "10.0.0.1")))
    site.reactor.advance(0)
    assert len(certs.prepared) == prepared
    assert site.current()[0] is routes


def test_catalog_subscribers_are_notified_only_when_the_catalog_changes(tmp_path: Path) -> None:
    site = started(tmp_path, ["fake"], {"fake": {"sources": ["src"], "certs": True}})
    [source], [certs] = site.sources, site.certs
    seen: list[CatalogView] = []

    def broken(view: CatalogView) -> None:
        raise RuntimeError("subscriber bug")

    site.subscribe_catalog(broken)
    site.subscribe_catalog(seen.append)
    source.publish(snapshot("src", "1", destination(BILLING, "10.0.0.1")))
    site.reactor.advance(0)
    assert [v.destinations for v in seen] == [(destination(BILLING, "10.0.0.1"),)]
    assert site.catalog_view() is seen[0]

    source.publish(snapshot("src", "1", destination(BILLING, "10.0.0.1")))
    site.reactor.advance(0)
    certs.changed()  # a certificate rotation rebuilds TLS, not the catalog
    assert len(seen) == 1

    source.publish(snapshot("src", "2", destination(PAYMENTS, "10.0.0.2")))
    site.reactor.advance(0)
    assert [v.destinations for v in seen][1:] == [(destination(PAYMENTS, "10.0.0.2"),)]


def test_a_snapshot_published_during_a_rebuild_is_applied_after_it(tmp_path: Path) -> None:
    """Rebuilds never overlap; the latest snapshot always wins in the end."""
    site = started(tmp_path, ["fake"], {"fake": {"sources": ["src"], "certs": True}})
    [source], [certs] = site.sources, site.certs
    certs.hold = True
    source.publish(snapshot("src", "1", destination(BILLING, "10.0.0.1")))
    site.reactor.advance(0)
    assert len(certs.held) == 1 and len(site.current()[0]) == 0
    source.publish(snapshot("src", "2", destination(PAYMENTS, "10.0.0.2")))
    site.reactor.advance(0)
    assert len(certs.held) == 1, "a second rebuild must not start while one is running"

    certs.held[0].callback(None)
    routes = site.current()[0]
    assert [s for s, _ in routes] == [sni(BILLING)]
    assert len(certs.held) == 2 and certs.prepared[-1] == {PAYMENTS}
    certs.held[1].callback(None)
    assert [s for s, _ in site.current()[0]] == [sni(PAYMENTS)]


def test_start_waits_for_a_silent_source_only_up_to_the_first_snapshot_timeout(
    tmp_path: Path,
) -> None:
    config = gateway_config(
        tmp_path,
        {"main": site_table(8443, ["fake"], fake={"silent_sources": ["slow"], "certs": True})},
    )
    site = build_site(config, "main")
    d = Deferred.fromCoroutine(site.start())
    reactor = site.reactor
    reactor.advance(FIRST_SNAPSHOT_TIMEOUT - 1)
    assert not d.called and reactor.tcpServers == []
    reactor.advance(1)
    result_of(d)
    assert site.listening and len(reactor.tcpServers) == 1


def test_a_terminating_site_without_a_certificate_provider_does_not_start(
    tmp_path: Path,
) -> None:
    config = gateway_config(tmp_path, {"edge": site_table(8443, ["fake"])})
    site = build_site(config, "edge")
    with pytest.raises(RuntimeError, match="site edge: no certificate provider"):
        result_of(Deferred.fromCoroutine(site.start()))
    assert not site.listening


# --- policy changes -------------------------------------------------------------------


@dataclass(eq=False)
class StubConnection:
    """The attributes of a DownstreamProtocol that the site's re-check reads and writes."""

    identity: SpiffeID | None
    state: State = State.SPLICING
    destination: Destination = field(default_factory=lambda: destination(BILLING, "10.0.0.1"))
    sni: str = field(default_factory=lambda: sni(BILLING))
    info: ConnectionInfo = field(
        default_factory=lambda: ConnectionInfo("main", 1, "127.0.0.1", 50000, 0.0)
    )
    decision: Decision | None = None
    closed: list[str] = field(default_factory=list)
    routes: Any = None  # the site's routes and TLS material at accept (site.current())
    material: Any = None

    def close(self, cause: str) -> None:
        self.closed.append(cause)
        self.state = State.CLOSED


def test_a_policy_change_closes_splicing_connections_it_now_denies(tmp_path: Path) -> None:
    site = started(
        tmp_path, ["fake"], {"fake": {"engines": [{"name": "e1", "mode": "allow"}], "certs": True}}
    )
    [engine] = site.engines
    web, api = StubConnection(identity("web")), StubConnection(identity("api"))
    handshaking = StubConnection(None, state=State.HANDSHAKE)
    for conn in (web, api, handshaking):
        assert site.connection_opened(conn)  # type: ignore[arg-type]
    engine.by_source = {"api": "deny"}
    engine.changed()
    assert api.closed == ["policy_revoked"]
    assert api.decision is not None and api.decision.verdict is Verdict.DENY
    assert web.closed == [] and handshaking.closed == []
    assert sorted(r.source.name for r in engine.requests) == ["api", "web"]
    assert metric(site, "tgw_downstream_rejected_total", reason="policy_revoked") == 1


def test_a_connection_closed_while_its_recheck_is_pending_is_left_alone(tmp_path: Path) -> None:
    site = started(
        tmp_path,
        ["fake"],
        {"fake": {"engines": [{"name": "e1", "mode": "allow"}], "certs": True}},
        authz_timeout="1s",
    )
    [engine] = site.engines
    conn = StubConnection(identity("web"))
    site.connection_opened(conn)  # type: ignore[arg-type]
    engine.mode = "hang"
    engine.changed()
    conn.state = State.CLOSED  # the client left meanwhile
    site.reactor.advance(1)  # the re-check times out: a deny, for a closed connection
    assert conn.closed == []
    assert metric(site, "tgw_downstream_rejected_total", reason="policy_revoked") == 0


# --- several sites --------------------------------------------------------------------


def test_two_sites_with_different_stacks_decide_differently(tmp_path: Path) -> None:
    """Site a uses intentions (web may not reach billing), site b an allow-everything
    drop-in; one process, one reactor, the same request."""
    config = gateway_config(
        tmp_path,
        {
            "a": site_table(
                8443, ["fake_a", "intentions"], fake_a={"sources": ["catalog"], "certs": True}
            ),
            "b": site_table(8444, ["fake_b", "allow_all"], fake_b={"certs": True}),
        },
    )
    reactor = MemoryReactorClock()
    a, b = build_site(config, "a", reactor), build_site(config, "b", reactor)
    for site in (a, b):
        result_of(Deferred.fromCoroutine(site.start()))
    assert [e.name for e in a.engines] == ["intentions"]
    assert [e.name for e in b.engines] == ["allow_all"]
    deny = Intention(ServiceName("web"), BILLING, "deny")
    [catalog] = a.sources
    catalog.publish(snapshot("catalog", "1", destination(BILLING, "10.0.0.1"), intentions=(deny,)))
    reactor.advance(0)

    decision_a = result_of(a.decide(authz_request(a)))
    decision_b = result_of(b.decide(authz_request(b)))
    assert (decision_a.verdict, decision_a.engine) == (Verdict.DENY, "intentions")
    assert (decision_b.verdict, decision_b.engine) == (Verdict.ALLOW, "allow_all")
    assert len(a.current()[0]) == 1 and len(b.current()[0]) == 0


def test_a_provider_of_bare_roots_keeps_working_with_one_deprecation_warning(
    tmp_path: Path,
) -> None:
    """A third-party provider of the 0.1 contract (``trust_roots`` answering bare
    certificates, no trust domain) keeps working for one release: its roots are the
    bundle of the site's own trust domain, with one DeprecationWarning and one log
    line per provider however often the roots are read (issue 16 §1)."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.warns(DeprecationWarning, match="returns trust roots without") as caught:
            site = started(
                tmp_path, ["fake", "fake_certs"], {"fake_certs": {"certs": True, "bare": True}}
            )
            for _ in range(3):
                site.trust_bundles()
    finally:
        globalLogPublisher.removeObserver(events.append)
    (certs,) = site.certs
    assert dict(site.trust_bundles()) == {TRUST_DOMAIN: (certs.ca.cert,)}
    assert site.trust_roots() == [certs.ca.cert]
    assert len([w for w in caught if w.category is DeprecationWarning]) == 1
    lines = [formatEvent(e) for e in events if "without a trust domain" in formatEvent(e)]
    assert len(lines) == 1 and repr(certs.name) in lines[0]


def test_a_root_tagged_with_another_domain_than_it_names_is_left_out_and_logged(
    tmp_path: Path,
) -> None:
    """A third-party provider tagging the mesh root (spiffe://<local td>) as
    peer.consul's: the root is in no bundle and not in ``trust_roots()``, with an error
    line naming the subject and both domains; peer.consul, now without a bundle, is a
    warning line (its clients cannot connect)."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        site = started(
            tmp_path,
            ["fake", "fake_certs"],
            {"fake_certs": {"certs": True, "domain": "peer.consul"}},
            extra_trust_domains=["peer.consul"],
        )
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert dict(site.trust_bundles()) == {} and site.trust_roots() == []
    lines = [formatEvent(e) for e in events]
    refused = [line for line in lines if "refused" in line and "trust root" in line]
    assert len(refused) == 1
    assert "peer.consul" in refused[0] and TRUST_DOMAIN in refused[0]
    assert any("extra trust domain peer.consul has no trust bundle" in line for line in lines)
