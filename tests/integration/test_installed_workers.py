"""``workers = 2`` from a non-editable install, started in the source checkout's root.

The case of a container whose working directory is the source, or a user who cloned
and ran ``pip install .``: the source tree's ``gwcore/`` (where ``plugins/`` is not
``gwcore.plugins``) sits in the working directory, and the workers must still import
the installed package the supervisor runs.

Kept fast: the install is ``pip install --no-deps --no-build-isolation --target`` into
a pip-less venv whose only other path is the test venv's site-packages (through a
``.pth`` line, so that directory's own ``.pth`` files, including the editable install's
finder, are not run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Upstream, hello
from tests.integration.test_twistd import (
    STOP_TIMEOUT,
    Ports,
    Program,
    http_through,
    spawn,  # noqa: F401  (the fixture)
    start_connect,
    status,
    wait_for,
    write_catalog,
    write_config,
)
from tests.test_packaging import NOT_SOURCE, REPO

pytestmark = pytest.mark.integration

INSTALL_TIMEOUT = 120


def installed_tgw(root: Path) -> tuple[Path, Path]:
    """A source checkout copy and a venv with tgw installed from it (not editable).

    Returns (source root, the venv's ``twistd``)."""
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        ).stdout.strip()
    )
    # The dependencies (Twisted, pyOpenSSL, ...) come from the test venv.
    (purelib / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    done = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(purelib), str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert (purelib / "gwcore" / "plugins" / "file_catalog.py").is_file()
    twistd = venv / "bin" / "twistd"  # what Twisted's console script does
    twistd.write_text(
        f"#!{python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"
    )
    twistd.chmod(0o755)
    return source, twistd


@pytest.fixture
def in_source_root(tmp_path: Path) -> Iterator[tuple[Path, Path, list[Program]]]:
    """(source root, installed twistd, started programs); every one is killed at teardown."""
    source, twistd = installed_tgw(tmp_path)
    started: list[Program] = []
    yield source, twistd, started
    for program in started:
        if program.popen.poll() is None:
            program.popen.terminate()
            try:
                program.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                program.popen.kill()
                program.popen.wait(5)


def test_two_workers_of_an_installed_tgw_serve_when_started_from_the_source_root(
    tmp_path: Path,
    in_source_root: tuple[Path, Path, list[Program]],
    spawn,  # noqa: F811  (the imported fixture, for tgw connect)
    request: pytest.FixtureRequest,
) -> None:
    """With tgw installed by ``pip install .`` and twistd started in the repository's
    root, both workers import the installed package (not the tree's ``gwcore/``), start,
    and serve a connection; SIGTERM stops them all."""
    source, twistd_path, started = in_source_root
    ports = Ports.pick()
    upstream = Upstream(hello(b"HTTP/1.0 200 OK\r\n\r\nfrom billing"))
    request.addfinalizer(upstream.close)
    write_catalog(tmp_path, {"billing": upstream.port})
    config = write_config(tmp_path, ports)
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\nworkers = 2\n", 1))
    out, err = tmp_path / "twistd.stdout", tmp_path / "twistd.stderr"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        popen = subprocess.Popen(
            [str(twistd_path), "--pidfile=", "-n", "tgw", "--config", str(config)],
            cwd=source,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    twistd = Program("installed twistd", popen, out, err)
    started.append(twistd)
    wait_for(lambda: "2 workers serving" in twistd.output(), "both workers serving", twistd)
    assert status(ports.admin, "/ready") == 200
    start_connect(spawn, config, ports, "billing")
    response = http_through(ports.connect)
    assert b" 200 " in response.split(b"\r\n", 1)[0], response
    assert "ModuleNotFoundError" not in twistd.output(), twistd.describe()
    twistd.popen.terminate()
    twistd.popen.wait(STOP_TIMEOUT)
    assert "tgw workers stopped" in twistd.output(), twistd.describe()
