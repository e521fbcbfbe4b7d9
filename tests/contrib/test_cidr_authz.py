"""contrib/tgw_cidr_authz: a third-party plugin distribution, installed with pip and
driven end to end through a real gateway (real TLS on loopback)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from gwcore.cli import main as tgw_main
from gwcore.contract.plugin_host import PluginLoadError
from gwcore.policy.model import Verdict
from gwcore.testing import authz_request, load_stack
from tests.harness import (
    HandshakeRefusedError,
    gateway_entry,
    hello,
    in_thread,
    registration,
    request,
    sni_for,
    write_json,
)

DISTRIBUTION = Path(__file__).resolve().parents[2] / "contrib" / "tgw_cidr_authz"

RULES = """
[sites.main.cidr_authz]
rules = [
  { action = "deny", source = "spiffe://*/ns/default/dc/*/svc/batch" },
  { action = "allow", source = "spiffe://*/ns/default/dc/dc1/svc/*", cidrs = ["127.0.0.0/8"] },
]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install`` of the distribution (a copy, so no build files land in the repo)
    into a target directory: the wheel's metadata carries the ``tgw`` entry point."""
    work = tmp_path_factory.mktemp("cidr")
    source = shutil.copytree(DISTRIBUTION, work / "src")
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        timeout=120,
    )
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(installed))
    yield installed
    sys.modules.pop("tgw_cidr_authz", None)
    importlib.invalidate_caches()


def test_the_installed_entry_point_loads_and_decides(tmp_path: Path, on_path: Path) -> None:
    """Resolved by its entry-point name, validated, collected: the first matching rule
    decides, nothing matching abstains (so default_policy decides)."""
    sections = {
        "cidr_authz": {
            "rules": [
                {"action": "deny", "source": "spiffe://*/ns/default/dc/*/svc/batch"},
                {"action": "allow", "cidrs": ["10.0.0.0/8"]},
            ]
        }
    }
    loaded = load_stack(tmp_path, ["cidr_authz"], sections)
    [engine] = loaded.engines
    assert engine.authorize(authz_request("batch")).verdict is Verdict.DENY
    assert engine.authorize(authz_request("web")).verdict is Verdict.ABSTAIN
    assert engine.authorize(authz_request("web", client_address="10.1.2.3")).allowed


def test_bad_rules_are_refused_naming_the_key(tmp_path: Path, on_path: Path) -> None:
    sections = {"cidr_authz": {"rules": [{"action": "allow", "cidrs": ["10.0.0.0/33"]}]}}
    with pytest.raises(PluginLoadError, match=r"sites\.main\.cidr_authz\.rules\[0\]\.cidrs"):
        load_stack(tmp_path, ["cidr_authz"], sections)


def test_tgw_plugins_lists_the_entry_point(on_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``tgw plugins`` shows the installed plugin, where it comes from and its hooks."""
    assert tgw_main(["plugins"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("cidr_authz ")]
    assert "entry point" in line
    assert "tgw_authorization_engines" in line and "tgw_validate_site_config" in line


@pytest_twisted.ensureDeferred
async def test_a_gateway_serves_through_the_installed_plugin(gateway, upstreams, on_path):
    """The distribution, pip-installed, enabled in a site's stack: web (loopback, dc1) is
    forwarded, batch is refused by the plugin's deny rule, and the access log names it."""
    up = upstreams(hello(b"ok"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    gateway.plugins = ["file_catalog", "builtin_ca", "cidr_authz"]
    gateway.site_options = {"default_policy": "deny"}
    gateway.extra_site = RULES
    await gateway.start()
    files = gateway.client_files
    assert await in_thread(request, gateway.port, sni_for("billing"), files("web")) == b"ok"
    with pytest.raises((HandshakeRefusedError, OSError)):
        reply = await in_thread(request, gateway.port, sni_for("billing"), files("batch"))
        assert reply == b"", "a denied client gets no bytes"
        raise OSError("closed without data")
    await gateway.wait_for(lambda: len(gateway.access_records()) == 2)
    by_source = {r["source"].rsplit("/", 1)[-1]: r for r in gateway.access_records()}
    assert (by_source["web"]["decision"], by_source["web"]["engine"]) == ("allow", "cidr_authz")
    assert (by_source["batch"]["decision"], by_source["batch"]["engine"]) == ("deny", "cidr_authz")
