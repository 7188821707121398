"""Sessions opened before tcplife started, and many sessions in a row."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import socket
import threading
from collections import Counter

import pytest

from .helpers.peers import Plan, assert_owned, run_session
from .helpers.tracing import TcplifeProcess
from .helpers.traffic import Load, free_port, run_load

pytestmark = pytest.mark.bpf


def test_session_opened_under_an_earlier_tcplife_is_reported_without_a_lifespan():
    """A socket keeps asking for state-change callbacks after the tcplife that
    saw its birth exits: the next tcplife reports its close, birth unseen,
    with exact bytes and the direction inferred from the socket's counters."""
    first = TcplifeProcess(["--json"]).__enter__()
    started = {}

    def restart_tcplife() -> None:
        first.stop()
        started["proc"] = TcplifeProcess(["--json"]).__enter__()

    plan = Plan(client_sends=777, server_sends=3333, pause=True)
    try:
        result = run_session(plan, between=restart_tcplife)
    finally:
        if first.returncode is None:
            first.stop()
    proc = started["proc"]
    try:
        (client,) = proc.matching(result.client.lport, result.client.rport)
        (server,) = proc.matching(result.server.lport, result.server.rport)
    finally:
        proc.stop()
    for record, end, direction in ((client, result.client, "outbound"),
                                   (server, result.server, "inbound")):
        assert record["birth_seen"] is False and record["duration_ns"] is None, record
        assert (record["tx_bytes"], record["rx_bytes"]) == (end.sent, end.received), record
        # Inferred from the socket's counters: only an active opener's SYN is acked.
        assert record["direction"] == direction, record
        assert_owned(record, end)  # both closed in their own context


def test_session_opened_before_any_tracer_is_not_reported():
    """Like bcc's tcplife: a session whose birth no program saw never asked for
    callbacks, so it is not reported at all (not with a made-up lifespan)."""
    started = {}

    def start_tcplife() -> None:
        started["proc"] = TcplifeProcess(["--json"]).__enter__()

    result = run_session(Plan(client_sends=5, server_sends=7, pause=True), between=start_tcplife)
    proc = started["proc"]
    follow_up = run_session(Plan(client_sends=1))  # reported: the tracer is running
    try:
        assert proc.matching(follow_up.client.lport, follow_up.client.rport)
        assert not proc.matching(result.client.lport, result.client.rport, timeout=0)
        assert not proc.matching(result.server.lport, result.server.rport, timeout=0)
    finally:
        proc.stop()


def _serve(listener: socket.socket, count: int, size: int) -> None:
    for _ in range(count):
        conn, _ = listener.accept()
        with conn:
            got = 0
            while got < size:
                got += len(conn.recv(size - got))
            conn.sendall(b"s" * size)
            conn.recv(1)  # the client's FIN


def _connect_many(port: int, count: int, size: int, used: str) -> None:
    """Writes the local port of each session to ``used``: after a heavy churn,
    TIME_WAIT reuse can give two sessions the same port."""
    ports = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            ports.append(sock.getsockname()[1])
            sock.sendall(b"c" * size)
            got = 0
            while got < size:
                got += len(sock.recv(size - got))
    with open(used, "w") as out:
        out.write(" ".join(map(str, ports)))


def test_ten_thousand_sessions_none_lost_none_duplicated(tcplife, tmp_path):
    count, size = 10_000, 100
    used = tmp_path / "client-ports"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        server = threading.Thread(target=_serve, args=(listener, count, size))
        server.start()
        client = multiprocessing.get_context("spawn").Process(
            target=_connect_many, args=(port, count, size, str(used)))
        client.start()
        client.join(120)
        server.join(120)
        assert client.exitcode == 0

    def ours(found: list[dict]) -> tuple[list[dict], list[dict]]:
        inbound = [s for s in found if s["lport"] == port]
        outbound = [s for s in found if s["rport"] == port]
        return inbound, outbound

    found = tcplife.wait_for(lambda f: sum(map(len, ours(f))) >= 2 * count, timeout=30)
    inbound, outbound = ours(found)
    assert len(inbound) == len(outbound) == count
    client_ports = Counter(map(int, used.read_text().split()))
    assert Counter(s["rport"] for s in inbound) == client_ports  # none lost, none twice
    assert Counter(s["lport"] for s in outbound) == client_ports
    assert all(s["pid"] == client.pid for s in outbound)
    assert all(s["pid"] == os.getpid() for s in inbound)
    assert all((s["tx_bytes"], s["rx_bytes"]) == (size, size) for s in inbound + outbound)


def _serve_and_close_first(listener: socket.socket, count: int) -> None:
    # The server closes first, so TIME_WAIT lands on its side and the client's
    # ephemeral ports are free again at once.
    for _ in range(count):
        conn, _ = listener.accept()
        conn.close()


def _sessions_while_stopped(proc: TcplifeProcess, count: int, *then: signal.Signals) -> int:
    """Run ``count`` sessions while tcplife is stopped, send it ``then``, stop it.

    Returns the server port, which is in every one of those sessions.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        port = listener.getsockname()[1]
        proc.proc.send_signal(signal.SIGSTOP)
        server = threading.Thread(target=_serve_and_close_first, args=(listener, count))
        server.start()
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.recv(1)
        server.join(60)
    for sig in then:
        proc.proc.send_signal(sig)
    assert proc.stop() == 0
    return port


def test_ring_buffer_drops_are_counted_and_reported():
    # 4 MiB of ring holds ~40k records: a stopped reader must lose some of 60k.
    count = 30_000
    with TcplifeProcess(["--json"]) as proc:
        port = _sessions_while_stopped(proc, count, signal.SIGCONT)
    ours = [s for s in proc.sessions() if port in (s["lport"], s["rport"])]
    match = re.search(r"tcplife: (\d+) sessions not printed because the ring buffer was full",
                      proc.stderr)
    assert match, proc.stderr
    dropped = int(match.group(1))
    assert 0 < len(ours) < 2 * count
    assert len(ours) + dropped >= 2 * count


def test_sessions_waiting_in_the_ring_are_printed_at_exit():
    # Fewer records than the wake-up threshold wait in the ring for the next
    # poll timeout; a stop that arrives first must still print them.
    count = 150
    with TcplifeProcess(["--json"]) as proc:
        port = _sessions_while_stopped(proc, count, signal.SIGINT, signal.SIGCONT)
    ours = [s for s in proc.sessions() if port in (s["lport"], s["rport"])]
    assert len(ours) == 2 * count


def test_concurrent_churns_are_printed_exactly(tcplife):
    """Eight IPv6 loopback churns with a thread per end: every session of their
    ports is printed once, both ends, with its lifespan (closes arrive in
    softirqs on top of whatever the CPUs run)."""
    loads = [Load(port=free_port(socket.AF_INET6), count=500, server_addr="::1")
             for _ in range(8)]
    threads = [threading.Thread(target=run_load, args=(load,)) for load in loads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ports = {load.port for load in loads}

    def ours(found: list[dict]) -> list[dict]:
        return [s for s in found if s["lport"] in ports or s["rport"] in ports]

    printed = ours(tcplife.wait_for(lambda f: len(ours(f)) >= 8000, timeout=30))
    assert len(printed) == 8000
    assert all(s["birth_seen"] and s["established"] for s in printed)
    assert Counter(s["direction"] for s in printed) == {"inbound": 4000, "outbound": 4000}
