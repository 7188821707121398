"""Faults the tools must survive while telling the truth: a consumer too slow for
the ring buffer, many scrapes at once, clients that stall or send garbage."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tcplife_exporter import cgroup
from tcplife_exporter.libbpf import BpfObject

from .helpers.exporting import ExporterProcess, parse_samples, total, value
from .helpers.tracing import TcplifeProcess
from .helpers.traffic import Load, build_churn, free_port, run_load

DURATION = "tcplife_session_duration_seconds"

pytestmark = pytest.mark.bpf


def test_a_stalled_tcplife_reports_exactly_what_the_full_ring_dropped(tmp_path, cgroups):
    """tcplife stopped (SIGSTOP) while an IPv6 churn closes far more sessions than the
    ring holds: the loss is told within a second of running again, and at exit
    printed + reported dropped = traced. Only the churn's cgroup is traced: other
    IPv6 sessions on the host (a bench beside the tests once added 62) are not."""
    churn, group = build_churn(tmp_path), cgroups("churn")
    with TcplifeProcess(["-6", "--json", "--cgroup-filter", str(group)]) as tcplife:
        tcplife.proc.send_signal(signal.SIGSTOP)
        try:
            done = subprocess.run([str(churn), "-6", "-w", "2", "-d", "3", "-b", "24000"],
                                  capture_output=True, text=True, check=True,
                                  preexec_fn=lambda: (group / "cgroup.procs").write_text("0"))
        finally:
            tcplife.proc.send_signal(signal.SIGCONT)
        result = json.loads(done.stdout)
        expected = 2 * result["sessions"]
        drained = len(tcplife.lines) - 1
        while len(tcplife.lines) != drained:  # what the ring kept, until no more comes
            drained = len(tcplife.lines)
            time.sleep(0.5)
        told = time.monotonic() + 3
        while "tcplife: lost" not in tcplife.stderr and time.monotonic() < told:
            time.sleep(0.1)
        live = re.search(r"tcplife: lost (\d+) more sessions \(not printed because the ring "
                         r"buffer was full; (\d+) so far\)", tcplife.stderr)
        assert live, tcplife.stderr  # told while running, not only at exit
        assert tcplife.stop(signal.SIGINT) == 0
    printed = len(tcplife.lines)
    dropped = re.search(r"tcplife: (\d+) sessions not printed because the ring buffer was full$",
                        tcplife.stderr, re.M)
    assert result["failures"] == 0
    assert dropped, tcplife.stderr  # the ring (~40,000 records) did fill: 3 s of churn
    assert printed + int(dropped.group(1)) == expected, (printed, dropped.group(0), expected)


def scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        parse_samples(response.read().decode())  # a whole, parseable body
        return response.status


def test_fifty_concurrent_scrapes_while_twenty_clients_say_nothing(tmp_path):
    with ExporterProcess(workdir=tmp_path) as exporter:
        silent = [socket.create_connection(("127.0.0.1", exporter.port)) for _ in range(20)]
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(scrape(exporter.port)))
                   for _ in range(50)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            for sock in silent:
                sock.close()
    assert statuses == [200] * 50


MALFORMED = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="no-method-and-path"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431,
                 id="header-too-long"),
    pytest.param(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, id="path-too-long"),
    pytest.param(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431,
                 id="too-many-headers"),
    pytest.param(b"GET / HTTP/1.1 extra\r\n\r\n", 400, id="four-words"),
    pytest.param(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405, id="post"),
    pytest.param(b"DELETE /metrics HTTP/1.1\r\n\r\n", 405, id="delete"),
    pytest.param(b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404, id="traversal"),
    pytest.param(b"GET /metrics\x00 HTTP/1.1\r\n\r\n", 404, id="nul-in-path"),
]


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    with ExporterProcess(workdir=tmp_path_factory.mktemp("malformed")) as running:
        yield running


@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED)
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(exporter, request_bytes,
                                                                   status):
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        status_line = sock.makefile("rb").readline()
    assert re.match(rb"HTTP/1\.[01] (\d+) ", status_line).group(1) == str(status).encode()
    assert scrape(exporter.port) == 200
    assert exporter.proc.poll() is None and "Traceback" not in exporter.stderr


SILENCED_SESSIONS = 20
SILENCED_SCRIPT = """
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
listener = socket.create_server(("::1", port), family=socket.AF_INET6, backlog=count)
clients = [socket.create_connection(("::1", port)) for _ in range(count)]
servers = [listener.accept()[0] for _ in clients]
for sock in clients + servers:
    sock.shutdown(socket.SHUT_RDWR)
for sock in clients + servers + [listener]:
    sock.close()
"""


@pytest.fixture
def silencing_cgroup(tmp_path):
    """A cgroup below the root where tests/helpers/silencer.bpf.c takes the
    state-change callbacks back from every socket: their closes go unseen."""
    helpers = Path(__file__).resolve().parent / "helpers"
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                             check=True).stdout.strip()
    obj_path = tmp_path / "silencer.bpf.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", f"-I/usr/include/{machine}", "-c",
                    str(helpers / "silencer.bpf.c"), "-o", str(obj_path)], check=True)
    path = Path(cgroup.hierarchy_root()) / f"tcplife-test-silenced-{os.getpid()}"
    path.mkdir()
    obj = BpfObject(str(obj_path))
    try:
        obj.load()
        obj.attach_cgroup("silence_closes", str(path))
        yield path
    finally:
        obj.close()
        path.rmdir()


def test_closes_never_seen_are_counted_and_their_slots_taken_over(tmp_path, silencing_cgroup):
    """Sessions whose close the program never sees stay open in the gauge until a new
    socket takes the address of one: then each is counted in close_unseen, and the
    new socket's session, born into the stale slot, is folded exactly."""
    silenced, fresh = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    config = (f"ports: {{labelled: [{silenced}, {fresh}], auto: false}}\n"
              "filters: {family: ipv6}\n")
    unseen = "tcplife_exporter_sessions_close_unseen_total"

    def still_open(s) -> float:
        return total(s, "tcplife_sessions_open", port=str(silenced))

    with ExporterProcess(config, workdir=tmp_path) as exporter:
        before = value(exporter.scrape(), unseen)
        procs_file = silencing_cgroup / "cgroup.procs"
        subprocess.run([sys.executable, "-c", SILENCED_SCRIPT, str(silenced),
                        str(SILENCED_SESSIONS)], check=True, timeout=30,
                       preexec_fn=lambda: procs_file.write_text("0"))
        samples = exporter.wait_until(lambda s: still_open(s) == 2 * SILENCED_SESSIONS)
        assert still_open(samples) == 2 * SILENCED_SESSIONS  # both ends, never closed
        sessions = 0
        deadline = time.monotonic() + 30
        while still_open(samples) == 2 * SILENCED_SESSIONS and time.monotonic() < deadline:
            run_load(Load(port=fresh, count=50, server_addr="::1"))
            sessions += 50
            samples = exporter.wait_until(lambda s, n=sessions: total(
                s, f"{DURATION}_count", port=str(fresh)) == 2 * n)
        found = 2 * SILENCED_SESSIONS - still_open(samples)
    assert found >= 1, "no new socket took the address of a silenced one"
    assert value(samples, unseen) - before >= found  # others on the host may add to it
    assert total(samples, f"{DURATION}_count", port=str(fresh)) == 2 * sessions
    assert total(samples, "tcplife_sessions_open", port=str(fresh)) == 0
