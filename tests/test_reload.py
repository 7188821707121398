"""SIGHUP reloads, SIGTERM/SIGINT shutdowns, and what stays in the kernel."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest

from .exporting import ExporterProcess, select, value
from .traffic import Load, free_port, run_load

COUNT = "tcplife_session_sent_bytes_count"
RELOAD_OK = "tcplife_exporter_config_last_reload_successful"


def attached_programs() -> int:
    """Programs of this project loaded in the kernel, by bpftool's account."""
    shown = subprocess.run(["bpftool", "prog", "show", "--json"], check=True,
                           capture_output=True, text=True).stdout
    return sum(p.get("name") == "inet_sock_set_state" for p in json.loads(shown))


def programs_settle_at(count: int, timeout: float = 5) -> bool:
    """The kernel frees a program shortly after its last user goes (RCU): wait for it."""
    deadline = time.monotonic() + timeout
    while attached_programs() != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def config_for(port: int, bound: int) -> str:
    return (f"ports: {{labelled: [{port}], auto: false}}\n"
            f"buckets: {{bytes: [{bound}]}}\nfilters: {{family: ipv6}}\n")


def le_values(samples) -> set[str]:
    return {dict(lab)["le"] for lab in select(samples, "tcplife_session_sent_bytes_bucket")}


def test_sighup_keeps_the_old_config_when_the_new_one_is_bad(tmp_path):
    port = free_port(socket.AF_INET6)
    before = attached_programs()
    with ExporterProcess(config_for(port, 100), workdir=tmp_path) as exporter:
        assert attached_programs() == before + 1
        run_load(Load(port=port, count=2, server_addr="::1"))
        exporter.wait_until(lambda s: value(s, COUNT, direction="outbound", port=str(port),
                                            family="ipv6") == 2)

        exporter.config_path.write_text("bukets: {}\n")
        exporter.proc.send_signal(signal.SIGHUP)
        samples = exporter.wait_until(lambda s: value(s, RELOAD_OK) == 0)
        assert value(samples, RELOAD_OK) == 0
        assert value(samples, COUNT, direction="outbound", port=str(port), family="ipv6") == 2
        assert le_values(samples) == {"100.0", "+Inf"}
        assert "config reload failed" in exporter.stderr and "bukets" in exporter.stderr

        exporter.config_path.write_text(config_for(port, 200))
        exporter.proc.send_signal(signal.SIGHUP)
        samples = exporter.wait_until(lambda s: value(s, RELOAD_OK) == 1)
        assert le_values(samples) <= {"200.0", "+Inf"}  # counters restart with the reload
        run_load(Load(port=port, count=1, server_addr="::1"))
        samples = exporter.wait_until(lambda s: value(s, COUNT, direction="outbound",
                                                      port=str(port), family="ipv6") == 1)
        assert value(samples, COUNT, direction="outbound", port=str(port), family="ipv6") == 1
        assert le_values(samples) == {"200.0", "+Inf"}
        assert programs_settle_at(before + 1)  # the old program is gone
        assert exporter.stop(signal.SIGTERM) == 0
    assert programs_settle_at(before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_detach_and_exit_zero(tmp_path, sig):
    before = attached_programs()
    with ExporterProcess(workdir=tmp_path) as exporter:
        assert attached_programs() == before + 1
        assert exporter.stop(sig) == 0
    assert programs_settle_at(before)
    assert "Traceback" not in exporter.stderr


def test_restart_on_the_same_port_works_at_once(tmp_path):
    first = ExporterProcess(workdir=tmp_path)
    with first:
        exporter_port = first.port
        assert first.stop(signal.SIGTERM) == 0
    second = ExporterProcess(workdir=tmp_path)
    second.argv[second.argv.index(f"127.0.0.1:{second.port}")] = f"127.0.0.1:{exporter_port}"
    second.port = exporter_port
    with second:
        assert value(second.scrape(), RELOAD_OK) == 1
