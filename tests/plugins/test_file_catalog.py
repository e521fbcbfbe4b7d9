"""The file_catalog plugin: Consul-shaped JSON files on disk as a catalog source."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from gwcore.contract import hookspecs
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.providers import CatalogSource
from gwcore.plugins import file_catalog
from gwcore.plugins.file_catalog import FileCatalogSource
from gwcore.policy.config import SiteConfig, parse_config
from gwcore.policy.model import CatalogSnapshot, Health

INTERVAL = 0.5
REPO_CATALOG = Path(__file__).resolve().parents[2] / "etc" / "catalog"

GATEWAY = {"Kind": "terminating-gateway", "Name": "legacy-gw", "Services": [{"Name": "billing"}]}
INTENTIONS = {
    "Kind": "service-intentions",
    "Name": "billing",
    "Sources": [{"Name": "web", "Action": "allow"}],
}


def registration(service: str, port: int, node: str = "ext", status: str = "passing") -> dict:
    return {
        "Node": node,
        "Address": "127.0.0.1",
        "Service": {"ID": f"{service}-1", "Service": service, "Port": port},
        "Checks": [{"CheckID": f"{service}-tcp", "Status": status, "ServiceID": f"{service}-1"}],
    }


def write(path: Path, document: Any) -> None:
    """Rewrite ``path`` in place (same inode), as an editor saving over it would."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(document) if not isinstance(document, str) else document)


def site_config(base: Path, section: dict[str, Any] | None = None, **site: Any) -> SiteConfig:
    table: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "name": "legacy-gw",
        "trust_domain": "example.consul",
        "plugins": ["file_catalog"],
        **site,
    }
    if section is not None:
        table["file_catalog"] = section
    return parse_config({"sites": {"main": table}}, str(base / "tgw.toml"), base).site("main")


@dataclass
class FakeSite:
    """Just enough of a SiteContext for a catalog source."""

    name: str
    config: SiteConfig
    reactor: Clock = field(default_factory=Clock)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    log_events: list[dict] = field(default_factory=list)
    state_dir: Path = Path("/nonexistent")

    def __post_init__(self) -> None:
        self.log = Logger(observer=self.log_events.append)

    def plugin_config(self, plugin: str) -> Any:
        return self.config.plugin_section(plugin)

    def resolve_path(self, path: str) -> Path:
        return self.config.base_dir / path

    def errors(self) -> float:
        labels = {"site": self.name, "source": "file_catalog"}
        return self.metrics.registry.get_sample_value("tgw_catalog_errors_total", labels) or 0.0

    def last_success(self) -> float | None:
        labels = {"site": self.name, "source": "file_catalog"}
        return self.metrics.registry.get_sample_value(
            "tgw_catalog_last_success_timestamp_seconds", labels
        )

    def error_lines(self) -> list[dict]:
        return [e for e in self.log_events if e["log_level"].name in ("warn", "error")]


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    directory = tmp_path / "catalog"
    directory.mkdir()
    write(directory / "gateway.json", GATEWAY)
    write(directory / "billing.json", registration("billing", 18080))
    write(directory / "intentions.json", INTENTIONS)
    return directory


@pytest.fixture
def site(tmp_path: Path, catalog: Path) -> FakeSite:
    config = site_config(tmp_path, {"paths": ["catalog"], "poll_interval": f"{INTERVAL}s"})
    return FakeSite("main", config)


class Running:
    """A started source and every snapshot it published."""

    def __init__(self, site: FakeSite) -> None:
        self.site = site
        self.snapshots: list[CatalogSnapshot] = []
        self.source = FileCatalogSource(site)  # type: ignore[arg-type]
        assert self.source.start(self.snapshots.append) is None

    @property
    def last(self) -> CatalogSnapshot:
        return self.snapshots[-1]

    def ports(self, service: str = "billing") -> list[int]:
        dest = {d.name: d for d in self.last.destinations}[service]
        return [e.port for e in dest.endpoints]

    def tick(self) -> None:
        self.site.reactor.advance(INTERVAL)


@pytest.fixture
def running(site: FakeSite):
    r = Running(site)
    yield r
    r.source.stop()


# --- the source ---------------------------------------------------------------------------


def test_start_publishes_the_first_snapshot_synchronously(running: Running, site: FakeSite):
    assert len(running.snapshots) == 1
    snapshot = running.last
    assert snapshot.source == "file_catalog" and snapshot.version
    (billing,) = snapshot.destinations
    assert (billing.name, billing.datacenter) == ("billing", "dc1")
    assert [(e.address, e.port, e.health) for e in billing.endpoints] == [
        ("127.0.0.1", 18080, Health.PASSING)
    ]
    assert [(i.source.name, i.action) for i in snapshot.intentions] == [("web", "allow")]
    assert snapshot.intentions[0].origin.endswith("intentions.json")
    health = running.source.health()
    assert health.ok and health.last_success == site.reactor.seconds()
    assert site.last_success() == site.reactor.seconds()


def test_the_source_meets_the_catalog_source_protocol(running: Running):
    assert isinstance(running.source, CatalogSource)
    assert running.source.name == "file_catalog"


def test_an_in_place_edit_is_picked_up_after_one_poll_interval(running: Running, catalog: Path):
    write(catalog / "billing.json", registration("billing", 18081))
    running.site.reactor.advance(INTERVAL / 2)
    assert len(running.snapshots) == 1
    running.site.reactor.advance(INTERVAL / 2)
    assert len(running.snapshots) == 2
    assert running.ports() == [18081]
    assert running.snapshots[0].version != running.last.version


def test_a_file_replaced_by_atomic_rename_is_picked_up(running: Running, catalog: Path):
    temporary = catalog / "billing.json.tmp"  # does not match *.json, so it is not read
    write(temporary, registration("billing", 18082))
    running.tick()
    assert len(running.snapshots) == 1
    os.replace(temporary, catalog / "billing.json")
    running.tick()
    assert running.ports() == [18082]


def test_a_new_file_is_picked_up(running: Running, catalog: Path):
    write(catalog / "gateway.json", GATEWAY | {"Services": [{"Name": "billing"}, {"Name": "ldap"}]})
    running.tick()
    assert running.ports("ldap") == []
    write(catalog / "ldap.json", registration("ldap", 1389))
    running.tick()
    assert running.ports("ldap") == [1389]
    assert running.ports("billing") == [18080]


def test_a_change_that_does_not_change_the_built_content_is_not_republished(
    running: Running, catalog: Path
):
    write(catalog / "crm.json", registration("crm", 9000))  # registered, but not linked
    running.tick()
    assert len(running.snapshots) == 1


@pytest.mark.parametrize(
    "broken",
    [
        '{"Node": "ext", "Address": ',
        registration("billing", 70000),
        [GATEWAY, {"Kind": "service-intentions", "Name": "billing", "Sources": [{"Name": "x"}]}],
    ],
    ids=["bad JSON", "bad port", "bad intention in a list"],
)
def test_a_file_made_invalid_keeps_its_last_good_content_and_fixing_it_clears_the_error(
    running: Running, site: FakeSite, catalog: Path, broken: Any
):
    write(catalog / "billing.json", broken)
    running.tick()
    assert running.ports() == [18080]  # the last good content stays in force
    assert len(running.snapshots) == 1
    assert site.errors() == 1
    last_error = running.source.health().last_error
    assert last_error is not None and "billing.json" in last_error
    assert not running.source.health().ok
    (line,) = site.error_lines()
    assert "billing.json" in line["problem"] and "log_failure" not in line

    running.tick()  # nothing changed: not reported again
    assert site.errors() == 1

    write(
        catalog / "intentions.json", INTENTIONS | {"Sources": [{"Name": "api", "Action": "deny"}]}
    )
    running.tick()  # another file's change still applies
    assert [i.source.name for i in running.last.intentions] == ["api"]
    assert running.ports() == [18080]

    write(catalog / "billing.json", registration("billing", 18083))
    running.tick()
    assert running.ports() == [18083]
    assert running.source.health().last_error is None
    assert site.errors() == 1


def test_a_file_bad_at_start_is_reported_and_the_good_files_still_publish(
    site: FakeSite, catalog: Path
):
    write(catalog / "intentions.json", "not json")
    running = Running(site)
    try:
        assert running.ports() == [18080]
        assert running.last.intentions == ()
        assert site.errors() == 1
        assert "intentions.json" in (running.source.health().last_error or "")
        write(catalog / "intentions.json", INTENTIONS)
        running.tick()
        assert len(running.last.intentions) == 1
        assert running.source.health().last_error is None
    finally:
        running.source.stop()


def test_a_deleted_file_removes_its_content_and_is_not_an_error(
    running: Running, site: FakeSite, catalog: Path
):
    (catalog / "billing.json").unlink()
    running.tick()
    assert running.ports() == []  # still linked, now with no endpoints
    (catalog / "intentions.json").unlink()
    running.tick()
    assert running.last.intentions == ()
    assert site.errors() == 0 and running.source.health().ok


def test_deleting_a_bad_file_resolves_its_error(running: Running, site: FakeSite, catalog: Path):
    write(catalog / "extra.json", "[")
    running.tick()
    assert running.source.health().last_error is not None
    (catalog / "extra.json").unlink()
    running.tick()
    assert running.source.health().last_error is None


def test_conflicting_files_are_reported_and_the_first_by_path_wins(
    running: Running, site: FakeSite, catalog: Path
):
    write(catalog / "zz-gateway.json", GATEWAY | {"Services": [{"Name": "ldap"}]})
    running.tick()
    assert [d.name for d in running.last.destinations] == ["billing"]
    assert site.errors() == 1
    assert "zz-gateway.json" in (running.source.health().last_error or "")
    (catalog / "zz-gateway.json").unlink()
    running.tick()
    assert running.source.health().last_error is None


def test_stop_stops_polling(running: Running, site: FakeSite, catalog: Path):
    running.source.stop()
    assert site.reactor.getDelayedCalls() == []
    write(catalog / "billing.json", registration("billing", 18084))
    running.tick()
    assert len(running.snapshots) == 1


def test_a_single_file_path_is_watched_too(tmp_path: Path, catalog: Path):
    config = site_config(
        tmp_path,
        {"paths": ["catalog/gateway.json", "catalog/billing.json"], "poll_interval": INTERVAL},
    )
    running = Running(FakeSite("main", config))
    try:
        assert running.ports() == [18080] and running.last.intentions == ()
        write(catalog / "billing.json", registration("billing", 18085))
        running.tick()
        assert running.ports() == [18085]
    finally:
        running.source.stop()


# --- hooks --------------------------------------------------------------------------------


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(file_catalog, name=file_catalog.NAME)
    pm.check_pending()
    return pm


def problems_for(config: SiteConfig) -> list[str]:
    results = plugin_manager().hook.tgw_validate_site_config(site=config)
    return [str(problem) for result in results for problem in result]


def test_catalog_sources_hook_builds_a_source_only_when_the_stack_names_it(
    site: FakeSite, tmp_path: Path
):
    hook = plugin_manager().hook
    (sources,) = hook.tgw_catalog_sources(site=site)
    assert [type(s) for s in sources] == [FileCatalogSource]
    other = FakeSite("main", site_config(tmp_path, plugins=[]))
    assert hook.tgw_catalog_sources(site=other) == [[]]


def test_validation_accepts_a_good_section_and_ignores_sites_without_the_plugin(
    tmp_path: Path, catalog: Path
):
    assert problems_for(site_config(tmp_path, {"paths": ["catalog"]})) == []
    assert problems_for(site_config(tmp_path, plugins=[])) == []


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, "sites.main.file_catalog.paths: is required"),
        ({"paths": []}, "sites.main.file_catalog.paths: must name at least one file or directory"),
        ({"paths": "missing"}, "sites.main.file_catalog.paths: '{base}/missing' does not exist"),
        ({"paths": ["catalog", 3]}, "sites.main.file_catalog.paths: must be a list of strings"),
        (
            {"paths": ["catalog"], "pathz": ["x"]},
            "sites.main.file_catalog.pathz: unknown key; did you mean 'paths'?",
        ),
        (
            {"paths": ["catalog"], "poll_interval": "10ms"},
            "sites.main.file_catalog.poll_interval: must be at least 0.05s, not 0.01s",
        ),
    ],
    ids=["no paths", "empty paths", "missing path", "not strings", "unknown key", "too fast"],
)
def test_validation_reports_section_problems(tmp_path: Path, catalog: Path, section, expected):
    found = problems_for(site_config(tmp_path, section))
    assert found == [f"{tmp_path}/tgw.toml: " + expected.format(base=tmp_path)]


def test_validation_reports_a_bad_catalog_file_by_name_and_json_location(
    tmp_path: Path, catalog: Path
):
    bad = GATEWAY | {"Services": [{"Name": "billing", "CertFile": "/gw.pem"}]}
    write(catalog / "gateway.json", [bad])
    write(catalog / "broken.json", '{"Node": }')
    found = problems_for(site_config(tmp_path, {"paths": ["catalog"]}))
    prefix = f"{tmp_path}/tgw.toml: sites.main.file_catalog.paths: "
    assert found == [
        prefix + f"{catalog}/broken.json: line 1 column 10: invalid JSON: Expecting value",
        prefix + f"{catalog}/gateway.json: [0].Services[0].CertFile: must have a CertFile, "
        "CAFile, and KeyFile specified for TLS origination",
    ]


def test_the_sample_catalog_validates_and_routes_billing(tmp_path: Path):
    config = site_config(REPO_CATALOG.parent, {"paths": ["catalog"], "poll_interval": INTERVAL})
    assert problems_for(config) == []
    running = Running(FakeSite("main", config))
    try:
        assert running.ports() == [18080]
        assert [(i.source.name, i.action) for i in running.last.intentions] == [
            ("web", "allow"),
            ("*", "deny"),
        ]
    finally:
        running.source.stop()
