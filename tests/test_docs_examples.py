"""Every shell and TOML example in docs/ and the README is checked against the code.

- TOML blocks are completed into a config (a site gets the keys it must have, and its
  sections' plugins) and run through ``tgw check-config``'s own validation; an unknown
  key or a bad value fails (missing files and the like are the reader's to provide).
  The block that says it is ``etc/tgw.toml`` must equal that file.
- Shell commands (```sh blocks and ``$ `` lines) must name commands, subcommands,
  options and make targets that exist: ``tgw`` lines go through the real argument
  parser, ``twistd ... tgw`` options through the twistd plugin's options.
- Documented ``tgw check-config`` output for the shipped config is the real output.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gwcore.cli import build_parser, main
from gwcore.runtime.config_check import check_config
from gwcore.runtime.tap import Options

REPO = Path(__file__).resolve().parents[1]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CERT_PROVIDERS = {"builtin_ca", "file_certs", "consul_certs"}
ESSENTIAL = {"mesh_hop", "upstream_tls", "plain_upstream"}
# Problems that mean the docs and the code disagree (not a file the reader must supply).
DRIFT = re.compile(r"^(unknown key|must be |is a plugin section)")


def blocks(lang: str | None = None) -> Iterator[tuple[str, int, str, str]]:
    """(file name, line, language, body) of every fenced block."""
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if lang is None or match.group(1) == lang:
                line = text.count("\n", 0, match.start()) + 1
                yield path.name, line, match.group(1), match.group(2)


def _toml_examples() -> list[Any]:
    found = []
    for name, line, _, body in blocks("toml"):
        data = tomllib.loads(body)  # every TOML example parses
        if "project" in data or "tool" in data:
            continue  # a pyproject.toml example, not a tgw config
        found.append(pytest.param(data, id=f"{name}:{line}"))
    return found


def _complete(data: dict[str, Any]) -> dict[str, Any]:
    """The example plus what a config must have around it (never overriding it)."""
    gateway = data.setdefault("gateway", {})
    gateway.setdefault("admin", "")
    gateway.setdefault("plugin_paths", [str(REPO / "contrib" / "addons")])
    sites = data.setdefault("sites", {"main": {}})
    for key, site in sites.items():
        site.setdefault("listen", f"tcp:0:interface=127.0.0.1:backlog={len(key)}")
        site.setdefault("name", "legacy-gw")
        site.setdefault("trust_domain", "example.consul")
        sections = [k for k, v in site.items() if isinstance(v, dict) and k not in ESSENTIAL]
        plugins = site.setdefault("plugins", sections)
        if site.get("role", "terminating") == "terminating" and not CERT_PROVIDERS & set(plugins):
            plugins.append("builtin_ca")
    return data


@pytest.mark.parametrize("example", _toml_examples())
def test_toml_examples_use_keys_and_values_the_code_accepts(
    example: dict[str, Any], tmp_path: Path
) -> None:
    """check-config finds no unknown key, bad value or stray section in the example."""
    import json

    path = tmp_path / "tgw.toml"
    path.write_text(_to_toml(_complete(example)))
    checked = check_config(path)
    drift = [str(p) for p in checked.problems if DRIFT.match(p.message)]
    assert drift == [], json.dumps(example, indent=1)


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for the examples' shapes (tables, strings, numbers, lists)."""
    import json

    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{json.dumps(key)} = {_value(value)}")
    out = ""
    if scalars or not prefix:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n"
    for key, value in tables:
        out += _to_toml(value, f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key))
    return out


def _value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def test_the_documented_complete_example_is_etc_tgw_toml() -> None:
    """configuration.md says its complete example is etc/tgw.toml: it is (same values)."""
    text = (REPO / "docs" / "configuration.md").read_text()
    intro = text.index("This is `etc/tgw.toml`")
    body = FENCE.search(text, intro)
    assert body is not None
    assert tomllib.loads(body.group(2)) == tomllib.loads((REPO / "etc" / "tgw.toml").read_text())


def _commands() -> list[Any]:
    found = []
    for name, line, lang, body in blocks():
        for offset, raw in enumerate(body.splitlines()):
            if lang in ("sh", "bash", "shell"):
                command = raw
            elif raw.startswith("$ "):
                command = raw[2:]
            else:
                continue
            command = command.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                found.append(pytest.param(command, id=f"{name}:{line + 1 + offset}"))
    return found


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.MULTILINE))


def _tap_options() -> set[str]:
    names = set()
    for long, short, *_ in [*Options.optParameters, *getattr(Options, "optFlags", [])]:
        names.add(f"--{long}")
        if short:
            names.add(f"-{short}")
    return names | {"--help"}


@pytest.mark.parametrize("command", _commands())
def test_shell_examples_name_commands_and_options_that_exist(command: str) -> None:
    """Each documented command parses: tgw subcommands and options, twistd's tgw options,
    make targets and python modules exist."""
    for part in re.split(r"&&|\|", command):
        words = shlex.split(part)
        if not words:
            continue
        program = Path(words[0]).name
        if program == "tgw":
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as e:
                pytest.fail(f"tgw rejects {part!r} (exit {e.code})")
        elif program == "twistd":
            assert "tgw" in words, part
            after = words[words.index("tgw") + 1 :]
            options = {w.split("=", 1)[0] for w in after if w.startswith("-")}
            assert options <= _tap_options(), f"unknown twistd tgw option in {part!r}"
        elif program == "make":
            targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            assert set(targets) <= _make_targets(), part
        elif program in ("python", "python3") and words[1:2] == ["-m"]:
            assert importlib.util.find_spec(words[2]) is not None, part


def _documented_outputs(command: str) -> Iterator[tuple[str, list[str]]]:
    for name, line, _, body in blocks(""):
        lines = body.splitlines()
        if lines and lines[0] == f"$ {command}":
            yield f"{name}:{line}", lines[1:]


def test_documented_check_config_output_of_the_shipped_config_is_real(capsys, monkeypatch) -> None:
    """Each documented successful `tgw check-config etc/tgw.toml` shows exactly what it prints."""
    monkeypatch.chdir(REPO)
    shown = [
        (where, lines)
        for where, lines in _documented_outputs(".venv/bin/tgw check-config etc/tgw.toml")
        if lines[:1] == ["etc/tgw.toml: OK"]
    ]
    assert shown, "cli.md shows check-config's output"
    assert main(["check-config", "etc/tgw.toml"]) == 0
    real = capsys.readouterr().out.splitlines()
    for where, lines in shown:
        assert lines == real, where


def test_documented_missing_config_hint_is_real(tmp_path: Path, capsys, monkeypatch) -> None:
    """The `cd /tmp && tgw check-config` example prints what cli.md shows."""
    ((where, lines),) = list(_documented_outputs("cd /tmp && tgw check-config"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TGW_CONFIG", raising=False)
    assert main(["check-config"]) == 1
    expected = [line.replace(" /tmp;", f" {tmp_path};") for line in lines]
    assert capsys.readouterr().err.splitlines() == expected, where
