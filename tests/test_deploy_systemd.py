"""deploy/install.sh and the systemd unit, tried as an operator would: installed
into directories of their own, verified by systemd-analyze, and the unit's exact
ExecStart run as an unprivileged user with the unit's capabilities, file-system
view, system-call filter and W^X memory (tests/helpers/sandbox_exec.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers.exporting import ExporterProcess, total, value
from .helpers.systemd_sandbox import (
    SANDBOX_UID,
    SYSTEM_PYTHON,
    sandboxed_exec_start,
    service_settings,
)
from .helpers.tracing import ToolProcess
from .helpers.traffic import Load, free_port, run_load

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
UNIT_NAME = "tcplife-exporter.service"
REPO_UNIT = REPO / "deploy" / "systemd" / UNIT_NAME
DEFAULT_PORT = 19525  # ExecStart has no listen address: the exporter's default
CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF = 12, 38, 39
UNIT_CAPS = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)
DURATION_COUNT = "tcplife_session_duration_seconds_count"


@dataclass(frozen=True)
class Install:
    base: Path

    @property
    def args(self) -> list[str]:
        return ["--prefix", str(self.base / "venv"), "--config-dir", str(self.base / "etc"),
                "--unit-dir", str(self.base / "units")]

    @property
    def unit(self) -> Path:
        return self.base / "units" / UNIT_NAME

    @property
    def config(self) -> Path:
        return self.base / "etc" / "config.yaml"

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["sh", str(INSTALL), *self.args, *extra], capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module")
def installed():
    # Under /opt: the sandbox hides /tmp, as PrivateTmp= does.
    base = Path(tempfile.mkdtemp(prefix="tcplife-exporter-test-", dir="/opt"))
    base.chmod(0o755)
    where = Install(base)
    where.run()
    yield where
    shutil.rmtree(base)


class SandboxedExporter(ExporterProcess):
    """The installed unit's ExecStart, on the exporter's default port."""

    def __init__(self, where: Install) -> None:
        ToolProcess.__init__(self, [], command=sandboxed_exec_start(where.unit, where.base))
        self.port = DEFAULT_PORT


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@pytest.mark.bpf
def test_install_puts_the_environment_config_and_unit_in_place(installed):
    assert (installed.base / "venv" / "bin" / "tcplife-exporter").exists()
    assert installed.config.read_text() == (REPO / "config.example.yaml").read_text()
    expected = (REPO_UNIT.read_text()
                .replace("/opt/tcplife-exporter", str(installed.base / "venv"))
                .replace("/etc/tcplife-exporter", str(installed.base / "etc")))
    assert installed.unit.read_text() == expected
    (exec_start,) = service_settings(installed.unit)["ExecStart"]
    assert exec_start.startswith(str(installed.base / "venv" / "bin" / "tcplife-exporter "))


@pytest.mark.bpf
def test_systemd_analyze_verifies_the_unit(installed):
    done = subprocess.run(["systemd-analyze", "verify", str(installed.unit)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.bpf
def test_the_readme_gives_the_units_exposure_score():
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(REPO_UNIT)],
                          capture_output=True, text=True)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score, done.stdout + done.stderr
    assert float(score.group(1)) < 2.0  # systemd calls < 2.0 "OK", the best band but "SAFE"
    readme = (REPO / "README.md").read_text()
    assert f"exposure level {score.group(1)}" in readme


@pytest.mark.bpf
def test_the_sandbox_applies_the_units_restrictions(installed):
    """The emulation bites: what the unit forbids fails inside it."""
    probe = installed.base / "probe.py"
    probe.write_text(
        "import mmap, os, socket\n"
        "def fails(what, call):\n"
        "    try:\n"
        "        call()\n"
        "    except OSError as err:\n"
        "        print(what, err.errno)\n"
        "    else:\n"
        "        print(what, 'allowed')\n"
        f"fails('write', lambda: open('{installed.base}/x', 'w'))\n"
        "fails('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))\n"
        "fails('wx', lambda: mmap.mmap(-1, 4096, prot=7))\n"
        "fails('affinity', lambda: os.sched_setaffinity(0, {0}))\n"
        "print('root', os.listdir('/root') if os.access('/root', os.R_OK) else 'hidden')\n"
        "print('uid', os.getuid())\n"
    )
    probe.chmod(0o644)
    argv = sandboxed_exec_start(installed.unit, installed.base)
    argv = [*argv[: argv.index("--") + 1], SYSTEM_PYTHON, str(probe)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answers = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert answers == {"write": "30", "netlink": "1", "wx": "1", "affinity": "1",
                       "root": "hidden", "uid": str(SANDBOX_UID)}, done.stdout  # EROFS, EPERM


@pytest.mark.bpf
def test_exec_start_serves_exact_metrics_as_the_units_user(installed):
    """The unit's exact command line, confined as the unit says, folds real IPv6
    sessions exactly, reloads a changed config (a new BPF program loaded and
    swapped in with the unit's capabilities only; the buckets stay, so the
    counters go on) and stops cleanly on SIGTERM."""
    port = free_port(socket.AF_INET6)
    example = (REPO / "config.example.yaml").read_text().replace("family: any", "family: ipv6")
    installed.config.write_text(example)
    with SandboxedExporter(installed) as exporter:
        status = proc_status(exporter.proc.pid)
        assert status["Uid"].split() == [str(SANDBOX_UID)] * 4
        assert int(status["CapEff"], 16) == UNIT_CAPS
        assert int(status["CapBnd"], 16) == UNIT_CAPS
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"

        run_load(Load(port=port, count=25, client_sends=300, server_sends=7000,
                      server_addr="::1"))
        samples = exporter.scrape()
        assert total(samples, DURATION_COUNT, port=str(port)) == 50
        assert total(samples, "tcplife_session_received_bytes_sum", port=str(port)) \
            == 25 * (300 + 7000)

        installed.config.write_text(example.replace("max_label_sets: 1000",
                                                    "max_label_sets: 999"))
        exporter.proc.send_signal(signal.SIGHUP)
        reloaded = "tcplife_exporter_config_last_reload_success_timestamp_seconds"
        before = value(samples, reloaded)
        samples = exporter.wait_until(lambda s: value(s, reloaded) != before)
        assert value(samples, "tcplife_exporter_config_last_reload_successful") == 1
        assert value(samples, "tcplife_exporter_label_sets_limit") == 999, exporter.stderr
        run_load(Load(port=port, count=5, server_addr="::1"))
        assert total(exporter.scrape(), DURATION_COUNT, port=str(port)) == 60
        assert exporter.stop(signal.SIGTERM) == 0, exporter.stderr


@pytest.mark.bpf
def test_reinstall_keeps_the_config_and_uninstall_removes_the_rest(installed):
    # Last in this file: it removes what the other tests use.
    installed.config.write_text("# the operator's own\n")
    installed.run()
    assert installed.config.read_text() == "# the operator's own\n"
    # A build that fails leaves the installed environment as it was.
    failed = subprocess.run(["sh", str(INSTALL), *installed.args], capture_output=True,
                            text=True, env={**os.environ, "PYTHON": "/bin/false"})
    assert failed.returncode == 1 and failed.stderr.startswith("install.sh: "), failed.stderr
    assert (installed.base / "venv" / "bin" / "tcplife-exporter").exists()
    installed.run("--uninstall")
    assert not (installed.base / "venv").exists() and not installed.unit.exists()
    assert installed.config.exists()
    installed.run("--uninstall", "--purge")
    assert not installed.config.parent.exists()
