"""The wheel ships what the plugin layout in pyproject.toml promises, and nothing generic."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).parents[1]
BUILD_TIMEOUT = 120

# Build output, caches and the venv are not part of the source tree pip sees.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the repo (so setuptools' in-tree ``build/`` never lands in it).

    Without build isolation first, as an offline build would; if the venv's own
    setuptools cannot build wheels (it has no ``bdist_wheel`` before setuptools 70.1
    unless ``wheel`` is installed), with isolation, where pip fetches the backend that
    ``[build-system] requires`` names.
    """
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    outputs = []
    for isolation in (["--no-build-isolation"], []):
        out = tmp_path / ("wheel-offline" if isolation else "wheel-isolated")
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation]
        done = subprocess.run(
            [*pip, "-w", str(out), str(source)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        wheels = list(out.glob("tgw-*.whl"))
        if done.returncode == 0 and len(wheels) == 1:
            return wheels[0]
        outputs.append(f"pip wheel {' '.join(isolation)}: {done.returncode}\n{done.stderr}")
    raise AssertionError("no wheel could be built:\n" + "\n".join(outputs))


def test_wheel_ships_gwcore_plugins_and_the_twistd_plugin_but_no_namespace_inits(
    tmp_path: Path,
) -> None:
    """Built-in plugins ship as gwcore.plugins; twisted/plugins/tgw.py lands in Twisted's
    namespace without an ``__init__`` of ours; no top-level ``plugins`` package; and the
    ``tgw`` console script points at gwcore.cli:main."""
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points_txt = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_txt).decode()

    assert "gwcore/plugins/file_catalog.py" in names
    assert "twisted/plugins/tgw.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("plugins/")]

    parsed = configparser.ConfigParser()
    parsed.read_string(entry_points)
    assert parsed["console_scripts"]["tgw"] == "gwcore.cli:main"
