"""SIGHUP reloads, SIGTERM/SIGINT shutdowns, and what stays in the kernel."""

from __future__ import annotations

import signal
import socket

import pytest

from .helpers.exporting import ExporterProcess, select, value
from .helpers.programs import loaded_programs, programs_of, unloaded
from .helpers.traffic import Load, free_port, run_load

pytestmark = pytest.mark.bpf

COUNT = "tcplife_session_sent_bytes_count"
RELOAD_OK = "tcplife_exporter_config_last_reload_successful"


def config_for(port: int, bound: int) -> str:
    return (f"ports: {{labelled: [{port}], auto: false}}\n"
            f"buckets: {{bytes: [{bound}]}}\nfilters: {{family: ipv6}}\n")


def le_values(samples) -> set[str]:
    return {dict(lab)["le"] for lab in select(samples, "tcplife_session_sent_bytes_bucket")}


def test_sighup_keeps_the_old_config_when_the_new_one_is_bad(tmp_path):
    port = free_port(socket.AF_INET6)
    with ExporterProcess(config_for(port, 100), workdir=tmp_path) as exporter:
        first = programs_of(exporter.proc.pid)
        assert len(first) == 1 and first <= loaded_programs()
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
        second = programs_of(exporter.proc.pid)
        assert len(second) == 1 and not second & first
        assert unloaded(first)  # the old program is gone
        assert exporter.stop(signal.SIGTERM) == 0
    assert unloaded(second)


def test_a_reload_that_keeps_the_buckets_continues_the_counters(tmp_path):
    """The new program takes over the open sessions and the old one's totals:
    a session open across the reload is folded once, with its lifespan."""
    port = free_port(socket.AF_INET6)
    config = config_for(port, 100)
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=3, server_addr="::1"))
        listener = socket.create_server(("::1", port), family=socket.AF_INET6)
        client = socket.create_connection(("::1", port))
        server, _ = listener.accept()
        exporter.wait_until(lambda s: value(s, COUNT, direction="outbound", port=str(port),
                                            family="ipv6") == 3)
        exporter.config_path.write_text(config + "limits: {max_label_sets: 999}\n")
        exporter.proc.send_signal(signal.SIGHUP)
        exporter.wait_until(lambda s: value(s, "tcplife_exporter_label_sets_limit") == 999)
        for sock in (client, server, listener):
            sock.close()
        samples = exporter.wait_until(lambda s: value(
            s, COUNT, direction="outbound", port=str(port), family="ipv6") == 4)
    # 4 each way: the session open across the reload was folded (a birth-unseen
    # one is not), and the 3 before it were carried over.
    for direction in ("outbound", "inbound"):
        assert value(samples, COUNT, direction=direction, port=str(port), family="ipv6") == 4
    assert "folded counters go on" in exporter.stderr


def test_a_reload_that_changes_the_label_rules_labels_open_sessions_again(tmp_path):
    """Labels are given at the birth; a session open across a reload that
    changes the port and network rules shows under its birth labels while
    open, and is folded under the new rules at its close."""
    port = free_port(socket.AF_INET6)
    before = f"ports: {{labelled: [{port}], auto: false}}\nfilters: {{family: ipv6}}\n"
    after = ("ports: {labelled: [], auto: false}\nfilters: {family: ipv6}\n"
             "remote_networks: {loopback: ['::1/128']}\n")
    with ExporterProcess(before, workdir=tmp_path) as exporter:
        listener = socket.create_server(("::1", port), family=socket.AF_INET6)
        client = socket.create_connection(("::1", port))
        server, _ = listener.accept()
        exporter.wait_until(lambda s: value(s, "tcplife_sessions_open", direction="outbound",
                                            port=str(port), family="ipv6") == 1)
        exporter.config_path.write_text(after)
        exporter.proc.send_signal(signal.SIGHUP)
        samples = exporter.wait_until(lambda s: any(
            "remote_network" in dict(lab) for lab in select(s, "tcplife_sessions_open")))
        for direction in ("outbound", "inbound"):
            assert value(samples, "tcplife_sessions_open", direction=direction,
                         port=str(port), family="ipv6", remote_network="other") == 1
        for sock in (client, server, listener):
            sock.close()
        samples = exporter.wait_until(lambda s: value(
            s, COUNT, direction="inbound", port="other", family="ipv6",
            remote_network="loopback") == 1)
    for direction in ("outbound", "inbound"):
        assert value(samples, COUNT, direction=direction, port="other", family="ipv6",
                     remote_network="loopback") == 1
        assert value(samples, "tcplife_sessions_open", direction=direction, port=str(port),
                     family="ipv6", remote_network="other") == 0
    assert "folded counters restart" in exporter.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_detach_and_exit_zero(tmp_path, sig):
    with ExporterProcess(workdir=tmp_path) as exporter:
        held = programs_of(exporter.proc.pid)
        assert len(held) == 1 and held <= loaded_programs()
        assert exporter.stop(sig) == 0
    assert unloaded(held)
    assert "Traceback" not in exporter.stderr


def test_sigkill_leaves_nothing_attached_and_a_restart_works_at_once(tmp_path):
    with ExporterProcess(workdir=tmp_path) as first:
        held = programs_of(first.proc.pid)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert unloaded(held)  # links and programs die with their last file descriptor
    second = ExporterProcess(workdir=tmp_path)
    second.argv[second.argv.index(f"127.0.0.1:{second.port}")] = f"127.0.0.1:{first.port}"
    second.port = first.port
    with second:
        assert value(second.scrape(), RELOAD_OK) == 1


def test_a_bad_web_config_fails_the_reload_and_keeps_both_files(tmp_path):
    web = tmp_path / "web.yaml"
    web.write_text("basic_auth_users: {}\n")
    args = ["--web.config.file", str(web)]
    with ExporterProcess(config_for(free_port(socket.AF_INET6), 100), args=args,
                         workdir=tmp_path) as exporter:
        web.write_text("tls_server_config: {cert_file: /nonexistent.pem, key_file: x}\n")
        exporter.config_path.write_text(config_for(free_port(socket.AF_INET6), 300))
        exporter.proc.send_signal(signal.SIGHUP)
        samples = exporter.wait_until(lambda s: value(s, RELOAD_OK) == 0)
        assert value(samples, RELOAD_OK) == 0  # still plain HTTP: the old web config
        assert le_values(samples) <= {"100.0", "+Inf"}  # and the old config
        assert "nonexistent.pem" in exporter.stderr
