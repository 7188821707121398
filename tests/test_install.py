"""A built wheel carries the compiled BPF program and its own libbpf, and runs without
the source tree and without the system's libbpf.so.1; the Makefile's run path installs
only what running needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .helpers.exporting import ExporterProcess, total
from .helpers.mounts import HIDE_SYSTEM_LIBBPF, in_mount_namespace
from .helpers.peers import Plan, run_session
from .helpers.tracing import REPO, TcplifeProcess
from .helpers.traffic import free_port

pytestmark = pytest.mark.bpf

BPF_OBJECT = "tcplife_exporter/bpf/tcplife.bpf.o"
LIBBPF_EXTENSION = "tcplife_exporter/_libbpf.abi3.so"


def test_wheel_ships_the_bpf_object_and_libbpf_and_runs_without_the_systems(tmp_path):
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
    (built_wheel,) = (tmp_path / "dist").glob("*.whl")
    assert built_wheel.name.endswith("-cp39-abi3-linux_x86_64.whl"), built_wheel.name
    # As make wheel does: libbpf and what it needs copied in, the manylinux tag given.
    tools = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    repaired = subprocess.run([sys.executable, "-m", "auditwheel", "repair", "-w",
                               str(tmp_path / "repaired"), str(built_wheel)],
                              capture_output=True, text=True, env=tools)  # its patchelf
    assert repaired.returncode == 0, repaired.stderr
    (wheel,) = (tmp_path / "repaired").glob("*.whl")
    assert re.fullmatch(r"tcplife_exporter-[\d.]+-cp39-abi3-manylinux_2_\d+_x86_64\.whl",
                        wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert {BPF_OBJECT, LIBBPF_EXTENSION} <= set(names)
    assert any(re.fullmatch(r"tcplife_exporter\.libs/libbpf-\w+\.so\.1[.\d]*", name)
               for name in names), names
    shown = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                           capture_output=True, text=True)
    assert re.search(r"is\s+consistent\s+with\s+the\s+following\s+platform\s+tag",
                     shown.stdout), shown.stdout

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True)
    # The exporter's dependencies, from this environment (no package index in a test):
    # after the new environment's own packages, so the wheel's package comes first.
    site = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (venv / site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    with TcplifeProcess(["--json"], prefix=in_mount_namespace(HIDE_SYSTEM_LIBBPF),
                        command=[str(venv / "bin" / "tcplife")], cwd=str(tmp_path)) as proc:
        result = run_session(Plan(client_sends=11, server_sends=22))
        (record,) = proc.matching(result.client.lport, result.client.rport)
    assert (record["tx_bytes"], record["rx_bytes"]) == (11, 22), json.dumps(record)

    port = str(free_port())
    with ExporterProcess(f"ports:\n  labelled: [{port}]\n", workdir=tmp_path,
                         prefix=in_mount_namespace(HIDE_SYSTEM_LIBBPF), cwd=str(tmp_path),
                         command=[str(venv / "bin" / "tcplife-exporter")]) as exporter:
        run_session(Plan(client_sends=300, server_sends=4000, port=int(port)))
        samples = exporter.wait_until(lambda s: total(
            s, "tcplife_session_sent_bytes_sum", port=port) == 4300)
    assert total(samples, "tcplife_session_duration_seconds_count", port=port) == 2
    assert total(samples, "tcplife_session_sent_bytes_sum", port=port) == 4300


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
