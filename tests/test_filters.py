"""In-kernel filters: -p, -L, -D, -4 and -6 select exactly the right sessions."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import time

import pytest

from .helpers.tracing import TcplifeProcess

pytestmark = pytest.mark.bpf

PER_TARGET = 3  # sessions to each (family, port)


def _serve(listener: socket.socket, count: int) -> None:
    for _ in range(count):
        conn, _ = listener.accept()
        with conn:
            conn.recv(16)
            conn.sendall(b"pong")
            conn.recv(16)


def _clients(targets: list[tuple[int, str, int]], go) -> None:
    go.wait(30)
    for family, addr, port in targets:
        for _ in range(PER_TARGET):
            kind = socket.AF_INET if family == 4 else socket.AF_INET6
            with socket.socket(kind) as sock:
                sock.connect((addr, port))
                sock.sendall(b"ping")
                sock.recv(16)


@pytest.fixture(scope="module")
def traffic():
    """Sessions to two ports over IPv4 and IPv6 from one client process, with
    tcplife started under each filter before the traffic begins."""
    listeners, targets = [], []
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            v4 = stack.enter_context(socket.socket(socket.AF_INET))
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6 = stack.enter_context(socket.socket(socket.AF_INET6))
            v6.bind(("::1", port))
            listeners += [v4, v6]
            targets += [(4, "127.0.0.1", port), (6, "::1", port)]
        for listener in listeners:
            listener.listen(16)
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        client = ctx.Process(target=_clients, args=(targets, go))
        client.start()
        p1, p2 = targets[0][2], targets[2][2]
        filters = {
            "pid": ["-p", str(client.pid)],
            "lport": ["-L", str(p1)],
            "rport": ["-D", str(p2)],
            "lports": ["-L", f"{p1},{p2}"],
            "ipv4": ["-4"],
            "ipv6": ["-6"],
            "mixed": ["-6", "-D", str(p1), "-p", str(client.pid)],
        }
        procs = {name: stack.enter_context(TcplifeProcess(["--json", *args]))
                 for name, args in filters.items()}
        servers = [threading.Thread(target=_serve, args=(lst, PER_TARGET)) for lst in listeners]
        for server in servers:
            server.start()
        go.set()
        client.join(60)
        for server in servers:
            server.join(60)
        yield procs, client.pid, p1, p2


def _ours(records: list[dict], p1: int, p2: int) -> list[dict]:
    return [r for r in records if {r["lport"], r["rport"]} & {p1, p2}]


def collect(proc, expected: int, p1: int, p2: int) -> list[dict]:
    proc.wait_for(lambda f: len(_ours(f, p1, p2)) >= expected, timeout=10)
    time.sleep(0.5)  # a wrong extra record would have arrived by now too
    return proc.sessions()


def test_pid_filter(traffic):
    procs, pid, p1, p2 = traffic
    records = collect(procs["pid"], 4 * PER_TARGET, p1, p2)
    assert records and all(r["pid"] == pid for r in records)
    assert len(_ours(records, p1, p2)) == 4 * PER_TARGET
    assert all(r["direction"] == "outbound" for r in _ours(records, p1, p2))


def test_local_port_filter(traffic):
    procs, _, p1, p2 = traffic
    records = collect(procs["lport"], 2 * PER_TARGET, p1, p2)
    assert all(r["lport"] == p1 for r in records)
    assert sorted(r["family"] for r in records) == [4] * PER_TARGET + [6] * PER_TARGET


def test_remote_port_filter(traffic):
    procs, _, p1, p2 = traffic
    records = collect(procs["rport"], 2 * PER_TARGET, p1, p2)
    assert all(r["rport"] == p2 for r in records)
    assert len(records) == 2 * PER_TARGET


def test_local_port_list(traffic):
    procs, _, p1, p2 = traffic
    records = collect(procs["lports"], 4 * PER_TARGET, p1, p2)
    assert all(r["lport"] in (p1, p2) for r in records)
    assert len(records) == 4 * PER_TARGET


@pytest.mark.parametrize("family", [4, 6])
def test_family_filter(traffic, family):
    procs, _, p1, p2 = traffic
    records = collect(procs[f"ipv{family}"], 4 * PER_TARGET, p1, p2)
    assert all(r["family"] == family for r in records)
    assert len(_ours(records, p1, p2)) == 4 * PER_TARGET  # both ends of 2 ports x 3


def test_filters_combine(traffic):
    procs, pid, p1, p2 = traffic
    records = collect(procs["mixed"], PER_TARGET, p1, p2)
    assert len(records) == PER_TARGET
    assert all((r["family"], r["rport"], r["pid"]) == (6, p1, pid) for r in records)


def test_no_filter_sees_other_pids_too(tcplife):
    # Sanity for the pid filter: unfiltered, this process's sessions are reported.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port)).close()
        listener.accept()[0].close()
    records = tcplife.wait_for(lambda f: any(r["lport"] == port for r in f))
    assert any(r["lport"] == port and r["pid"] == os.getpid() for r in records)
