"""``scripts/test-deps.sh``, run by ``make test``: installs the servers the suite starts.

The real packages stay installed (other test runs use them): the script runs with a
PATH holding only recording stand-ins for ``id``, ``apt-get`` and ``sudo`` (plus the
real ``chmod`` and ``rm`` it needs), with its search directories, the nginx stream
module's path and the policy-rc.d path pointed into ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "scripts" / "test-deps.sh"
ALL_PACKAGES = ["dnsmasq", "haproxy", "nginx", "wrk", "libnginx-mod-stream"]


@dataclass
class Machine:
    root: Path
    bin: Path
    sbin: Path
    log: Path
    policy: Path
    stream_module: Path

    def install_tools(self, *tools: str) -> None:
        """Pretend these are installed (executables in the sbin directory)."""
        for tool in tools:
            if tool == "libnginx-mod-stream":
                self.stream_module.write_text("")
                continue
            path = self.sbin / tool
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)

    def fake(self, name: str, body: str = "") -> None:
        """A stand-in that records its name and arguments, then runs ``body``."""
        path = self.bin / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{self.log}"\n{body}\n')
        path.chmod(0o755)

    def run(self, uid: int) -> subprocess.CompletedProcess[str]:
        self.fake("id", f"echo {uid}")
        env = {
            "PATH": str(self.bin),
            "TGW_TEST_DEPS_SBIN": str(self.sbin),
            "TGW_NGINX_STREAM_MODULE": str(self.stream_module),
            "TGW_POLICY_RC_D": str(self.policy),
        }
        return subprocess.run(
            ["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    bin_dir, sbin = tmp_path / "bin", tmp_path / "sbin"
    bin_dir.mkdir()
    sbin.mkdir()
    for tool in ("chmod", "rm"):
        real = shutil.which(tool)
        assert real is not None
        os.symlink(real, bin_dir / tool)
    m = Machine(
        tmp_path,
        bin_dir,
        sbin,
        tmp_path / "calls.log",
        tmp_path / "policy-rc.d",
        tmp_path / "ngx_stream_module.so",
    )
    # apt-get records whether policy-rc.d is in place, and what it answers, as dpkg would.
    m.fake(
        "apt-get",
        f'if [ -x "{m.policy}" ]; then "{m.policy}" nginx start; '
        f'echo "policy-rc.d answers $?" >> "{m.log}"; '
        f'else echo "no policy-rc.d" >> "{m.log}"; fi',
    )
    m.fake("sudo")
    return m


def test_as_root_it_updates_then_installs_only_the_missing_packages_with_services_blocked(
    machine: Machine,
) -> None:
    """As root with dnsmasq and wrk present: ``apt-get update`` first, then one install of
    exactly the missing packages; during both a policy-rc.d refuses service starts (exit
    101), and it is gone afterwards."""
    machine.install_tools("dnsmasq", "wrk")
    done = machine.run(uid=0)
    assert done.returncode == 0, done.stderr
    assert machine.calls() == [
        "id -u",
        "apt-get update -qq",
        "policy-rc.d answers 101",
        "apt-get install -y -qq --no-install-recommends haproxy nginx libnginx-mod-stream",
        "policy-rc.d answers 101",
    ]
    assert not machine.policy.exists()
    assert "haproxy nginx libnginx-mod-stream" in done.stdout


def test_on_a_bare_machine_as_root_it_installs_every_package(machine: Machine) -> None:
    """Nothing present: all five packages are installed in one apt-get install."""
    done = machine.run(uid=0)
    assert done.returncode == 0, done.stderr
    installs = [c for c in machine.calls() if c.startswith("apt-get install")]
    assert installs == [
        "apt-get install -y -qq --no-install-recommends "
        "dnsmasq haproxy nginx wrk libnginx-mod-stream"
    ]


@pytest.mark.parametrize("uid", [0, 1000])
def test_with_everything_present_it_installs_nothing(machine: Machine, uid: int) -> None:
    """Idempotent: with every server and the stream module present, neither apt-get nor
    sudo runs (as root or not), nothing is printed, and it succeeds."""
    machine.install_tools(*ALL_PACKAGES)
    done = machine.run(uid=uid)
    assert done.returncode == 0
    assert [c for c in machine.calls() if not c.startswith("id")] == []
    assert done.stdout == done.stderr == ""
    assert not machine.policy.exists()


def test_an_existing_policy_rc_d_is_kept(machine: Machine) -> None:
    """A policy-rc.d the machine already has is used as it is and not removed."""
    machine.policy.write_text("#!/bin/sh\nexit 101\n")
    machine.policy.chmod(0o755)
    assert machine.run(uid=0).returncode == 0
    assert machine.policy.read_text() == "#!/bin/sh\nexit 101\n"


def test_not_root_with_sudo_it_runs_itself_again_through_sudo(machine: Machine) -> None:
    """Not root, sudo available: the script hands itself to sudo (which then installs as
    root); apt-get is not run directly."""
    machine.install_tools("dnsmasq", "haproxy", "nginx", "libnginx-mod-stream")
    done = machine.run(uid=1000)
    assert done.returncode == 0, done.stderr
    assert [c for c in machine.calls() if not c.startswith("id")] == [f"sudo -- sh {SCRIPT}"]
    assert "wrk" in done.stdout


def test_not_root_without_sudo_it_stops_with_one_line_naming_the_packages(
    machine: Machine,
) -> None:
    """Neither root nor sudo: exit 1 with one line on stderr naming the missing packages
    and the command to run; nothing is installed."""
    (machine.bin / "sudo").unlink()
    machine.install_tools("haproxy", "nginx", "libnginx-mod-stream")
    done = machine.run(uid=1000)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "missing Debian packages" in lines[0]
    assert lines[0].endswith("(install them as root: apt-get install dnsmasq wrk)")
    assert [c for c in machine.calls() if not c.startswith("id")] == []
