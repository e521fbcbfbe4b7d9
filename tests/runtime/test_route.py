"""gwcore.runtime.route: the route step on its own, without a site: snapshots merged into a
new route table once the site accepts, the other steps told (``installed``) before the
catalog subscribers and the ``tgw_routes_changed`` event, a re-published version ignored,
and a connection's view of (routes, TLS) taken once (in memory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from gwcore.contract.metrics import GatewayMetrics
from gwcore.policy.model import CatalogSnapshot, Destination, Endpoint, ServiceName
from gwcore.policy.sni import service_sni
from gwcore.runtime.route import Router
from gwcore.testing import TRUST_DOMAIN, site_config

BILLING = ServiceName("billing")


@dataclass
class Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    accepting: bool = True

    def has_listeners(self, hook: str) -> bool:
        return True

    def dispatch(self, hook: str, event: Any) -> None:
        self.calls.append((hook, event))


def router(tmp_path: Path) -> tuple[Router, Recorder, MemoryReactorClock]:
    seen = Recorder()
    reactor = MemoryReactorClock()
    step = Router(
        site_config(tmp_path, role="mesh"),
        reactor,
        GatewayMetrics(),
        Logger(),
        certificates=lambda: [],
        accepting=lambda: seen.accepting,
        installed=lambda old, new, view: seen.calls.append(("installed", (len(old), len(new)))),
        events=seen,
        terminates_tls=False,
    )
    step.subscribe(lambda view: seen.calls.append(("subscriber", view.version)))
    return step, seen, reactor


def billing_snapshot(version: str) -> CatalogSnapshot:
    destination = Destination(BILLING, "dc1", (Endpoint("10.0.0.1", 8080),))
    return CatalogSnapshot("src", (destination,), version=version)


def test_a_snapshot_becomes_a_route_table_and_every_party_is_told_in_order(
    tmp_path: Path,
) -> None:
    """A published snapshot is routed on the next turn of the reactor: the table maps the
    service's SNI, ``installed`` runs first, then subscribers, then the event."""
    step, seen, reactor = router(tmp_path)
    before, _ = step.current()
    step.publish(0, billing_snapshot("1"))
    assert len(step.routes) == 0, "nothing changes before the reactor turns"
    reactor.advance(0)
    routes, _ = step.current()
    assert routes.lookup(service_sni(BILLING, "dc1", TRUST_DOMAIN)).name == "billing"
    assert [name for name, _ in seen.calls] == ["installed", "subscriber", "tgw_routes_changed"]
    assert seen.calls[0][1] == (0, 1)
    assert len(before) == 0, "a table already read is never changed in place"
    gauge = step.metrics.registry.get_sample_value("tgw_routes", {"site": "main"})
    assert gauge == 1.0


def test_the_same_version_twice_is_not_rebuilt_and_nothing_before_accepting(
    tmp_path: Path,
) -> None:
    """A source re-publishing its version changes nothing; while the site does not accept
    yet, publishing schedules no rebuild (the site's start builds the first table)."""
    step, seen, reactor = router(tmp_path)
    seen.accepting = False
    step.publish(0, billing_snapshot("1"))
    reactor.advance(0)
    assert seen.calls == []
    seen.accepting = True
    step.publish(0, billing_snapshot("1"))
    reactor.advance(0)
    assert seen.calls == []
    step.publish(0, billing_snapshot("2"))
    reactor.advance(0)
    assert [name for name, _ in seen.calls] == ["installed", "subscriber", "tgw_routes_changed"]
