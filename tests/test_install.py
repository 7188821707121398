"""A built wheel carries the compiled BPF program and runs without the source tree; the
Makefile's run path installs only what running needs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from .helpers.peers import Plan, run_session
from .helpers.tracing import REPO, TcplifeProcess

pytestmark = pytest.mark.bpf

BPF_OBJECT = "tcplife_exporter/bpf/tcplife.bpf.o"


def test_wheel_ships_the_bpf_object_and_runs(tmp_path):
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    assert not (source / BPF_OBJECT).exists()  # the build must compile it

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert BPF_OBJECT in zipfile.ZipFile(wheel).namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    with TcplifeProcess(["--json"], command=[str(venv / "bin" / "tcplife")],
                        cwd=str(tmp_path)) as proc:
        result = run_session(Plan(client_sends=11, server_sends=22))
        (record,) = proc.matching(result.client.lport, result.client.rport)
    assert (record["tx_bytes"], record["rx_bytes"]) == (11, 22), json.dumps(record)


@pytest.mark.parametrize("target", ["run", "tcplife"])
def test_the_run_path_installs_only_what_running_needs(target, tmp_path):
    """make run and make tcplife install the package, not the test toolchain
    (pytest, hypothesis, ruff); make test does."""
    def pip_lines(goal: str) -> list[str]:
        planned = subprocess.run(["make", "-n", goal, f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                                 capture_output=True, text=True, check=True).stdout
        return [line for line in planned.splitlines() if "pip install" in line]

    assert pip_lines(target) and not any("[test]" in line for line in pip_lines(target))
    assert any("[test]" in line for line in pip_lines("test"))
