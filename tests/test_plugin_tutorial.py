"""docs/plugin-tutorial.md: the tutorial's plugin and its test run as written (the files
are taken from the page, and pytest runs the test in a fresh process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "plugin-tutorial.md"
FILE_BLOCK = re.compile(r"<!-- tutorial-file: (\S+) -->\n```python\n(.*?)```", re.DOTALL)


def test_the_tutorial_example_runs_as_written(tmp_path: Path) -> None:
    """Every file of the tutorial (the connection addon, the HTTP addon and their
    tests), written out verbatim, passes under pytest."""
    files = dict(FILE_BLOCK.findall(TUTORIAL.read_text()))
    assert sorted(files) == [
        "loopback_only.py",
        "mesh_caller.py",
        "test_loopback_only.py",
        "test_mesh_caller.py",
    ]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    passed = subprocess.run(
        [*command, "test_loopback_only.py", "test_mesh_caller.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "3 passed" in passed.stdout
