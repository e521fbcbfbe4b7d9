"""The ``tgw`` command, run in-process through ``gwcore.cli.main``."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gwcore import __version__
from gwcore.cli import main
from gwcore.contract.plugin_host import ESSENTIAL_PLUGINS
from tests.harness import GATEWAY, Gateway, gateway_entry, registration, write_json

PROBLEM_LINE = re.compile(r"^(?P<file>.+?): (?P<key>[\w.()-]+): (?P<message>.+)$")


def config_file(root: Path, **options) -> Path:
    """The harness's valid gateway config (with its catalog directory), plus ``options``."""
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    return Gateway(root, **options).write_config()


def problems_of(stderr: str, file: str) -> tuple[list[str], str]:
    """The problem keys printed for ``file``, and the summary (last) line (warnings,
    printed on the same stream, are left out)."""
    lines = [line for line in stderr.splitlines() if ": warning: " not in line]
    keys = []
    for line in lines[:-1]:
        match = PROBLEM_LINE.match(line)
        assert match is not None, f"not a 'file: key: message' line: {line!r}"
        assert match["file"] == file
        keys.append(match["key"])
    return keys, lines[-1]


def test_check_config_accepts_a_good_file_and_explains_it(tmp_path: Path, capsys) -> None:
    """A valid file: exit 0, "FILE: OK", each site with its effective plugin stack (the
    named plugins in order, then the essential ones)."""
    path = config_file(tmp_path)
    write_json(tmp_path / "catalog" / "gateway.json", gateway_entry("billing", "ledger"))
    regs = [registration("billing", 9001), registration("billing", 9002)]
    write_json(tmp_path / "catalog" / "registrations.json", [*regs, registration("ledger", 9003)])
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: OK"
    assert lines[1].startswith(f"  site main: terminating gateway {GATEWAY!r} in dc1, ")
    assert "listen tcp:0:interface=127.0.0.1" in lines[1]
    assert "default_policy deny" in lines[1]
    stack = ["file_catalog", "builtin_ca", "intentions", *ESSENTIAL_PLUGINS]
    assert lines[2] == f"    plugins: {', '.join(stack)}"
    assert lines[3] == "    deciding engines: intentions (all abstain: deny)"
    assert lines[4] == "    destinations: billing (2 endpoints, plain), ledger (1 endpoint, plain)"
    assert lines[5] == "  admin: tcp:0:interface=127.0.0.1"


def _replace(old: str, new: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        path = config_file(root)
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
        return path

    return build


def _with(**options) -> Callable[[Path], Path]:
    return lambda root: config_file(root, **options)


def _syntax_error(root: Path) -> Path:
    path = root / "tgw.toml"
    path.write_text("[gateway\n")
    return path


def _missing_catalog(root: Path) -> Path:
    path = config_file(root)
    (root / "catalog").rmdir()
    return path


BAD_FILES: list[tuple[str, Callable[[Path], Path], list[str]]] = [
    ("missing-file", lambda root: root / "absent.toml", ["(file)"]),
    ("syntax", _syntax_error, ["(syntax)"]),
    (
        "core-keys",
        _with(site_options={"default_policy": "maybe", "bogus_key": 1}),
        ["sites.main.default_policy", "sites.main.bogus_key"],
    ),
    ("bad-endpoint", _replace('admin = "tcp:0:', 'admin = "tcp:notaport:'), ["gateway.admin"]),
    (
        "unknown-plugin",
        _with(plugins=["file_catalog", "builtin_ca", "intentions", "no_such_plugin"]),
        ["sites.main.plugins"],
    ),
    ("plugin-section-key", _with(extra_site="surprise = 1"), ["sites.main.builtin_ca.surprise"]),
    ("missing-catalog", _missing_catalog, ["sites.main.file_catalog.paths"]),
]


@pytest.mark.parametrize(
    ("build", "keys"), [(b, k) for _, b, k in BAD_FILES], ids=[i for i, _, _ in BAD_FILES]
)
def test_check_config_lists_every_problem_with_file_and_key_then_a_summary(
    tmp_path: Path, capsys, build: Callable[[Path], Path], keys: list[str]
) -> None:
    """A bad file: exit 1, nothing on stdout, one "FILE: KEY: MESSAGE" line per problem on
    stderr, then "FILE: N problem(s)"."""
    path = build(tmp_path)
    assert main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    printed, summary = problems_of(err, str(path))
    assert printed == keys
    assert summary == f"{path}: {len(keys)} problem(s)"


def test_check_config_lists_core_and_plugin_problems_in_one_run(tmp_path: Path, capsys) -> None:
    """One run reports every problem (the promise in gwcore/policy/config.py's docstring),
    so a core-key mistake does not hide an unknown plugin until the next run."""
    path = config_file(
        tmp_path,
        site_options={"bogus_key": 1},
        plugins=["file_catalog", "builtin_ca", "intentions", "no_such_plugin"],
    )
    assert main(["check-config", str(path)]) == 1
    printed, _ = problems_of(capsys.readouterr().err, str(path))
    assert set(printed) == {"sites.main.bogus_key", "sites.main.plugins"}


def test_version_prints_the_package_version(capsys) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"{__version__}\n"


def test_no_command_is_a_usage_error(capsys) -> None:
    """Without a subcommand argparse exits 2 and shows the usage."""
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: tgw" in capsys.readouterr().err


def test_check_config_explains_a_mesh_site(tmp_path: Path, capsys) -> None:
    """A mesh site is described as pass-through, with where each kind of name goes."""
    path = config_file(
        tmp_path,
        plugins=["file_catalog"],
        site_options={"role": "mesh"},
        extra_site='[sites.main.mesh_hop.gateways]\ndc2 = ["127.0.0.1:9443"]',
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"  site main: mesh gateway {GATEWAY!r} in dc1, ")
    assert out[3].startswith("    mesh: SNI pass-through, never terminates TLS and holds no key")
    assert "configured for: dc2" in out[3]


def test_check_config_explains_wan_federation_and_the_default_mode(tmp_path: Path, capsys) -> None:
    """A mesh site with wan_federation says it routes Consul server names; a terminating
    site's hop reports Consul's default mode, none."""
    path = config_file(
        tmp_path,
        plugins=["file_catalog"],
        site_options={"role": "mesh"},
        extra_site="[sites.main.mesh_hop]\nwan_federation = true",
    )
    assert main(["check-config", str(path)]) == 0
    assert "Consul server names (WAN federation)" in capsys.readouterr().out
    path = config_file(tmp_path, extra_site='[sites.main.mesh_hop.destinations]\nbilling = "local"')
    assert main(["check-config", str(path)]) == 0
    assert "mode none" in capsys.readouterr().out
