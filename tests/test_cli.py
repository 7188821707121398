"""The tcplife command as a user runs it: output formats, options, signals, errors."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .helpers.exporting import EXPORTER
from .helpers.mounts import HIDE_SYSTEM_LIBBPF, in_mount_namespace
from .helpers.peers import Plan, run_session
from .helpers.programs import loaded_programs, programs_of, unloaded
from .helpers.tracing import REPO, TCPLIFE, TcplifeProcess

HEADER = "PID   COMM       LADDR           LPORT RADDR           RPORT TX_KB RX_KB MS"


def run_tool(command: tuple[str, ...], prefix: list[str] = (),
             cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *command], cwd=cwd, capture_output=True, text=True,
                          timeout=30)


def run_tcplife(args: list[str]) -> subprocess.CompletedProcess:
    return run_tool((*TCPLIFE, *args))


def one_session(proc: TcplifeProcess, **plan) -> tuple[object, list[str]]:
    """Run a session and wait for both of its lines."""
    before = len(proc.lines)
    result = run_session(Plan(**plan))
    port = str(result.server.lport)

    def arrived() -> list[str]:
        return [line for line in proc.lines[before:] if port in line]

    proc.wait_for(lambda _: len(arrived()) >= 2)
    return result, arrived()


@pytest.mark.bpf
def test_default_columns_match_bcc():
    with TcplifeProcess([]) as proc:
        result, lines = one_session(proc, client_sends=4096, server_sends=10 * 1024 + 5,
                                    hold_s=0.02)
        assert proc.lines[0] == HEADER
    by_pid = {int(line.split()[0]): line.split() for line in lines}
    client = by_pid[result.client.pid]
    assert client[1:6] == ["tl-client", "127.0.0.1", str(result.client.lport),
                              "127.0.0.1", str(result.server.lport)]
    assert client[6:8] == ["4", "10"]  # TX_KB, RX_KB
    assert 20.0 <= float(client[8]) < 1000.0  # MS
    server = by_pid[result.server.pid]
    assert server[1] == "tl-server" and server[6:8] == ["10", "4"]


@pytest.mark.bpf
def test_wide_csv_and_time_columns():
    with TcplifeProcess(["-w", "-T", "-t"]) as proc:
        _, lines = one_session(proc, family=6, server_addr="::1")
        assert proc.lines[0].split() == ["TIME", "TIME(s)", "PID", "COMM", "IP", "LADDR",
                                         "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS"]
        fields = lines[0].split()
        assert re.fullmatch(r"\d\d:\d\d:\d\d", fields[0]) and float(fields[1]) >= 0
        assert fields[4] == "6" and fields[5] == "::1"
    with TcplifeProcess(["-s", "-T", "-t"]) as proc:
        _, lines = one_session(proc, client_sends=2048)
        assert proc.lines[0] == ("TIME,TIME(s),PID,COMM,IP,LADDR,LPORT,RADDR,RPORT,"
                                 "TX_KB,RX_KB,MS")
        fields = lines[0].split(",")
        assert len(fields) == 12 and fields[4] == "4" and fields[5] == "127.0.0.1"


@pytest.mark.bpf
def test_json_keys_and_types(tcplife):
    result = run_session(Plan(client_sends=5, server_sends=6))
    (record,) = tcplife.matching(result.client.lport, result.client.rport)
    expected = {"pid": int, "comm": str, "family": int, "laddr": str, "lport": int,
                "raddr": str, "rport": int, "direction": str, "birth_seen": bool,
                "duration_ns": int, "tx_bytes": int, "rx_bytes": int, "cgroup": str}
    for key, kind in expected.items():
        assert isinstance(record[key], kind), (key, record)
    line = next(line for line in tcplife.lines if json.loads(line) == record)
    assert "\n" not in line


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_exit_cleanly_and_unload(sig):
    with TcplifeProcess(["--json"]) as proc:
        held = programs_of(proc.proc.pid)
        assert held and held <= loaded_programs()
        assert proc.stop(sig) == 0
    assert unloaded(held)
    assert "Traceback" not in proc.stderr


@pytest.mark.bpf
def test_works_in_a_pipe_that_closes():
    # `tcplife | head -2`: the header and one line, then a clean exit.
    pipeline = subprocess.Popen(
        f"{' '.join(TCPLIFE)} | head -2", shell=True, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        for _ in range(200):
            if pipeline.poll() is not None:
                break
            socket.create_connection(listener.getsockname()).close()
            listener.accept()[0].close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                pipeline.wait(0.05)
    out, err = pipeline.communicate(timeout=10)
    assert out.splitlines()[0] == HEADER and len(out.splitlines()) == 2
    assert "Traceback" not in err


BAD_OPTIONS = [
    (["-L", "0"], "invalid port '0'"),
    (["-D", "70000"], "invalid port '70000'"),
    (["-L", "80,http"], "invalid port 'http'"),
    (["-p", "-5"], "expected one argument"),
    (["-p", "abc"], "invalid PID 'abc'"),
    (["-4", "-6"], "not allowed with argument"),
    (["--json", "-s"], "choose one"),
    (["--json", "-T"], "shape the columns"),
    (["--json", "--cgroup"], "always has 'time', full addresses and 'cgroup'"),
    (["--cgroup", "/system.slice"], "--cgroup takes no path: it adds the CGROUP column; to "
                                    "trace the sockets of one cgroup, use --cgroup-filter PATH"),
    (["-L", "\u0661\u0662"], "invalid port"),  # Arabic-Indic digits are not a port
    (["-L", "\u00b2"], "invalid port"),
]


@pytest.mark.bpf
@pytest.mark.parametrize(("args", "message"), BAD_OPTIONS)
def test_bad_options_one_clear_line(args, message):
    done = run_tcplife(args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("tcplife: error:")


# What the commands import besides the standard library (the exporter all of them).
DEPENDENCIES = ("prometheus_client", "yaml", "_yaml", "bcrypt")


@pytest.fixture(scope="module")
def readable_copy():
    """The package and what it imports, copied where any user can read them: the
    checkout and its virtual environment may be private (mktemp -d is 0700)."""
    root = tempfile.mkdtemp(prefix="tcplife-")
    os.chmod(root, 0o755)
    sources = [REPO / "tcplife_exporter"] + [
        Path(importlib.util.find_spec(name).submodule_search_locations[0])
        for name in DEPENDENCIES]
    for source in sources:
        shutil.copytree(source, os.path.join(root, source.name),
                        ignore=shutil.ignore_patterns("__pycache__"))
    yield root
    shutil.rmtree(root)


def as_nobody(caps: str = "") -> list[str]:
    """setpriv arguments for user nobody holding exactly ``caps`` (e.g. "+bpf")."""
    if not caps:
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                "--inh-caps=-all"]
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}"]


# Both commands start through the same checks: each must say what is missing.
TOOLS = [
    pytest.param(TCPLIFE, "tcplife", id="tcplife"),
    pytest.param((*EXPORTER, "--web.listen-address", "127.0.0.1:19613"), "tcplife-exporter",
                 id="exporter"),
]


@pytest.mark.bpf
@pytest.mark.parametrize(("command", "name"), TOOLS)
def test_unprivileged_user_gets_a_clear_message(readable_copy, command, name):
    done = subprocess.run([*as_nobody(), *command], cwd=readable_copy, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"{name}: tracing TCP sessions needs root, or CAP_BPF, CAP_PERFMON and "
        "CAP_NET_ADMIN; this process lacks CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN")


@pytest.mark.bpf
def test_bpf_perfmon_and_net_admin_capabilities_are_enough(readable_copy):
    with TcplifeProcess(["--json"], prefix=as_nobody("+bpf,+perfmon,+net_admin"),
                        cwd=readable_copy) as proc:
        result = run_session(Plan(client_sends=3))
        assert proc.matching(result.client.lport, result.client.rport)


@pytest.mark.bpf
def test_without_net_admin_the_message_names_it(readable_copy):
    done = subprocess.run([*as_nobody("+bpf,+perfmon"), *TCPLIFE], cwd=readable_copy,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("this process lacks CAP_NET_ADMIN"), done.stderr


@pytest.mark.bpf  # root: a mount namespace
@pytest.mark.parametrize(("command", "name"), TOOLS)
def test_kernel_without_btf(command, name):
    done = run_tool(command, in_mount_namespace("mount -t tmpfs none /sys/kernel/btf"))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"{name}: this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): tracing "
        "needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.5 or newer)")


@pytest.mark.bpf  # root: a mount namespace
@pytest.mark.parametrize(("command", "name"), TOOLS)
def test_libbpf_missing(command, name, tmp_path):
    """A package without its own libbpf (a checkout whose extension was never built), on
    a system without libbpf.so.1."""
    shutil.copytree(REPO / "tcplife_exporter", tmp_path / "tcplife_exporter",
                    ignore=shutil.ignore_patterns("_libbpf*.so", "__pycache__"))
    done = run_tool(command, in_mount_namespace(HIDE_SYSTEM_LIBBPF), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"{name}: libbpf.so.1 was not found: install")


@pytest.mark.bpf  # root: a mount namespace
def test_a_damaged_bundled_libbpf_is_named(tmp_path):
    bundled = next((REPO / "tcplife_exporter").glob("_libbpf*.so"))
    (tmp_path / "damaged").write_text("not a shared object\n")
    done = run_tool(TCPLIFE, in_mount_namespace(f"mount --bind {tmp_path}/damaged {bundled}"))
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"tcplife: the package's libbpf {bundled} cannot be loaded: "), done.stderr


@pytest.mark.bpf
def test_hostile_process_names_stay_on_one_line():
    name = 'a,b"c\nd'
    for args, parse in (([], lambda line: line.split()[1]),
                        (["-s"], lambda line: next(csv.reader([line]))[1])):
        with TcplifeProcess(args) as proc:
            result, lines = one_session(proc, client_comm=name)
        (client,) = [line for line in lines if line.startswith(str(result.client.pid))]
        assert parse(client) == 'a,b"c\\x0ad'


@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up_exits_cleanly(sig):
    proc = subprocess.Popen(TCPLIFE, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # the interpreter is up; the BPF program may not be loaded yet
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
