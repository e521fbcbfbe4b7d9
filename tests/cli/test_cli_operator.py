"""The ``tgw`` command's operator conveniences: ``--version`` and config discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from gwcore import __version__
from gwcore.cli import main
from gwcore.runtime.config_discovery import ConfigNotFoundError, discover_config
from tests.harness import Gateway


def test_version_flag_prints_name_and_version(capsys) -> None:
    """``tgw --version`` prints ``tgw VERSION`` and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"tgw {__version__}\n"


def test_discovery_order_is_flag_then_environment_then_default(tmp_path: Path, monkeypatch) -> None:
    """--config wins over TGW_CONFIG, which wins over etc/tgw.toml in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "tgw.toml").write_text("")
    (tmp_path / "env.toml").write_text("")
    assert discover_config("given.toml", {"TGW_CONFIG": "env.toml"}) == "given.toml"
    assert discover_config(None, {"TGW_CONFIG": "env.toml"}) == "env.toml"
    assert discover_config(None, {}) == "etc/tgw.toml"


def test_a_missing_discovered_config_gets_a_hint(tmp_path: Path, monkeypatch) -> None:
    """No etc/tgw.toml here, or a TGW_CONFIG naming nothing: the message says where it looked
    and to pass --config."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigNotFoundError) as info:
        discover_config(None, {})
    assert str(info.value) == (
        f"no config file given and etc/tgw.toml does not exist in {tmp_path}; "
        "pass --config FILE or set TGW_CONFIG=FILE"
    )
    with pytest.raises(ConfigNotFoundError, match=r"^TGW_CONFIG=gone.toml: no such file; pass"):
        discover_config(None, {"TGW_CONFIG": "gone.toml"})


@pytest.mark.parametrize(
    "argv",
    [
        ["check-config"],
        ["run"],
        ["connect", "--service", "web", "--upstream", "billing", "--listen", "tcp:0"],
        ["explain", "--source", "web", "--destination", "billing"],
    ],
    ids=["check-config", "run", "connect", "explain"],
)
def test_every_subcommand_finds_the_config_the_same_way(
    tmp_path: Path, monkeypatch, capsys, argv: list[str]
) -> None:
    """Without --config and TGW_CONFIG, in a directory without etc/tgw.toml, every
    subcommand exits 1 with the same hint (and starts nothing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TGW_CONFIG", raising=False)
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"tgw: no config file given and etc/tgw.toml does not exist in {tmp_path}; "
        "pass --config FILE or set TGW_CONFIG=FILE\n"
    )


def test_check_config_uses_tgw_config(tmp_path: Path, monkeypatch, capsys) -> None:
    """``TGW_CONFIG=FILE tgw check-config`` checks FILE."""
    (tmp_path / "catalog").mkdir()
    path = Gateway(tmp_path).write_config()
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("TGW_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--trust-domain", "typo.consul"],
            "tgw connect: no built-in CA for trust domain typo.consul ",
        ),
        ([], "tgw connect: site main does not use builtin_ca and "),
    ],
    ids=["other-trust-domain", "site-without-builtin-ca"],
)
def test_connect_refuses_to_create_a_ca_the_gateway_would_not_trust(
    tmp_path: Path, capsys, argv: list[str], expected: str
) -> None:
    """``tgw connect --trust-domain X`` (or for a site without builtin_ca) exits 1 without
    creating a CA, unless ``--create-ca`` asks for one."""
    (tmp_path / "catalog").mkdir()
    plugins = ["file_catalog", "builtin_ca"] if argv else ["file_catalog", "intentions"]
    path = Gateway(tmp_path, plugins=plugins).write_config()
    base = ["connect", "--service", "web", "--upstream", "billing", "--listen", "tcp:0"]
    assert main([*base, "--config", str(path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert "--create-ca" in err
    assert not list(tmp_path.rglob("ca-key.pem"))
