"""Both ends of one real TCP session, each in its own process.

Each end runs in a fresh process (multiprocessing "forkserver") with its own name
(prctl PR_SET_NAME) and, optionally, its own network namespace, so tests can
check which process a session is attributed to.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

import pytest

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15
CLONE_NEWNET = 0x40000000
CHUNK = 1 << 16


@dataclass
class Plan:
    """What the two ends do: the sizes each sends, who closes, and how."""

    client_sends: int = 0
    server_sends: int = 0
    closer: str = "client"  # "client", "server" or "both" (at the same moment)
    abort: bool = False  # the closer resets (SO_LINGER 0) instead of sending FIN
    hold_s: float = 0.0  # keep the session open this long after the exchange
    family: int = 4
    server_addr: str = "127.0.0.1"
    port: int = 0
    client_comm: str = "tl-client"
    server_comm: str = "tl-server"
    client_netns: str | None = None
    server_netns: str | None = None
    # Cgroup v2 directories each end joins at its start, and (client) after
    # socket() before connect() or (server) after listen() before accept().
    client_cgroup: str | None = None
    server_cgroup: str | None = None
    client_moves_to: str | None = None
    server_moves_to: str | None = None
    pause: bool = False  # after the exchange, wait for run_session's `between`


@dataclass
class End:
    """What one end saw: its identity, its socket's addresses and its byte counts."""

    pid: int = 0
    comm: str = ""
    laddr: str = ""
    lport: int = 0
    raddr: str = ""
    rport: int = 0
    sent: int = 0
    received: int = 0
    start_ns: int = 0  # the client: just before connect()
    born_by_ns: int = 0  # connect() or accept() has returned: the birth is behind
    closing_ns: int = 0  # just before close()
    end_ns: int = 0  # close() has returned
    error: str = ""


@dataclass
class Result:
    client: End
    server: End
    start_ns: int = field(init=False)
    first_close_ns: int = field(init=False)
    end_ns: int = field(init=False)

    def __post_init__(self) -> None:
        self.start_ns = self.client.start_ns
        self.first_close_ns = min(self.client.closing_ns, self.server.closing_ns)
        self.end_ns = max(self.client.end_ns, self.server.end_ns)


def _join_cgroup(directory: str | None) -> None:
    if directory:
        with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))


def _enter(comm: str, netns: str | None, cgroup: str | None) -> None:
    _join_cgroup(cgroup)
    if netns:
        with open(f"/run/netns/{netns}") as ns:
            if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns}")
    _libc.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0)


def _send(sock: socket.socket, count: int) -> int:
    block = b"x" * CHUNK
    left = count
    while left:
        left -= sock.send(block[: min(left, CHUNK)])
    return count


def _receive(sock: socket.socket, count: int) -> int:
    got = 0
    while got < count:
        data = sock.recv(min(CHUNK, count - got))
        if not data:
            break
        got += len(data)
    return got


def _drain(sock: socket.socket) -> int:
    """Read until EOF or reset; the byte count read."""
    got = 0
    try:
        while data := sock.recv(CHUNK):
            got += len(data)
    except ConnectionResetError:
        pass
    return got


def _unacked(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


def _wait_all_acked(sock: socket.socket) -> None:
    deadline = time.monotonic() + 5
    while _unacked(sock) and time.monotonic() < deadline:
        time.sleep(0.001)


def _finish(sock: socket.socket, me: str, plan: Plan, sync, end: End) -> None:
    """Close as the plan says, reading whatever the peer still sends."""
    ready, paused = sync
    if plan.pause:
        paused.wait()  # both ends and the test are here
        paused.wait()  # the test has done its part
    if plan.abort:
        # A reset discards unacknowledged data: make "sent" mean delivered.
        _wait_all_acked(sock)
        ready.wait()
    if plan.closer == "both":
        ready.wait()
    elif plan.closer != me:
        end.received += _drain(sock)
    if plan.abort and plan.closer == me:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    end.closing_ns = time.monotonic_ns()
    sock.close()
    end.end_ns = time.monotonic_ns()


def _describe(sock: socket.socket, end: End) -> None:
    end.laddr, end.lport = sock.getsockname()[:2]
    end.raddr, end.rport = sock.getpeername()[:2]


def _server(plan: Plan, port_queue, sync, results) -> None:
    end = End(pid=os.getpid(), comm=plan.server_comm)
    try:
        _enter(plan.server_comm, plan.server_netns, plan.server_cgroup)
        family = socket.AF_INET if plan.family == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((plan.server_addr, plan.port))
            listener.listen(8)
            _join_cgroup(plan.server_moves_to)
            port_queue.put(listener.getsockname()[1])
            sock, _ = listener.accept()
        end.born_by_ns = time.monotonic_ns()
        _describe(sock, end)
        end.received = _receive(sock, plan.client_sends)
        end.sent = _send(sock, plan.server_sends)
        time.sleep(plan.hold_s)
        _finish(sock, "server", plan, sync, end)
    except Exception as err:  # reported to the test, which fails with it
        end.error = repr(err)
        port_queue.put(0)
    results.put(("server", end))


def _client(plan: Plan, port_queue, sync, results) -> None:
    end = End(pid=os.getpid(), comm=plan.client_comm)
    try:
        _enter(plan.client_comm, plan.client_netns, plan.client_cgroup)
        port = port_queue.get(timeout=10)
        family = socket.AF_INET if plan.family == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        _join_cgroup(plan.client_moves_to)
        end.start_ns = time.monotonic_ns()
        sock.connect((plan.server_addr, port))
        end.born_by_ns = time.monotonic_ns()
        _describe(sock, end)
        end.sent = _send(sock, plan.client_sends)
        end.received = _receive(sock, plan.server_sends)
        time.sleep(plan.hold_s)
        _finish(sock, "client", plan, sync, end)
    except Exception as err:
        end.error = repr(err)
    results.put(("client", end))


def _processes() -> multiprocessing.context.BaseContext:
    """Fresh processes forked from one forkserver that has imported this module:
    the test process has threads, so no plain fork; and a spawn per end costs an
    interpreter start, seconds under emulation (the kernel matrix)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def run_session(plan: Plan, timeout: float = 60, between=None) -> Result:
    """Run one session to its end; both ends' views of it.

    With ``plan.pause``, ``between()`` runs while the session is established
    and idle, before either end closes.
    """
    ctx = _processes()
    port_queue, results = ctx.Queue(), ctx.Queue()
    paused = ctx.Barrier(3)
    sync = (ctx.Barrier(2), paused)
    procs = [
        ctx.Process(target=target, args=(plan, port_queue, sync, results))
        for target in (_server, _client)
    ]
    for proc in procs:
        proc.start()
    if plan.pause:
        paused.wait(timeout)
        between()
        paused.wait(timeout)
    ends = dict(results.get(timeout=timeout) for _ in procs)
    for proc in procs:
        proc.join(timeout)
    for name, end in ends.items():
        if end.error:
            raise AssertionError(f"{name} end failed: {end.error}")
    return Result(client=ends["client"], server=ends["server"])


# What tcplife reported of a run, checked against what both ends saw.
def reported(tcplife, result: Result) -> tuple[dict, dict]:
    """The client's and the server's session records for one run."""
    c, s = result.client, result.server
    (client,) = tcplife.matching(c.lport, c.rport)
    (server,) = tcplife.matching(s.lport, s.rport)
    return client, server


def assert_exact(tcplife, result: Result) -> tuple[dict, dict]:
    client, server = reported(tcplife, result)
    for record, end in ((client, result.client), (server, result.server)):
        assert (record["tx_bytes"], record["rx_bytes"]) == (end.sent, end.received), record
        assert record["laddr"] == end.laddr and record["raddr"] == end.raddr
    assert client["direction"] == "outbound" and server["direction"] == "inbound"
    return client, server


def assert_owned(record: dict, end) -> None:
    assert (record["pid"], record["comm"]) == (end.pid, end.comm), record


def assert_unknown_or_owned(record: dict, end) -> None:
    if record["pid"] == 0:
        assert record["comm"] == "", record
    else:
        assert_owned(record, end)


CLOSES = [
    pytest.param("client", False, id="client-closes-first"),
    pytest.param("server", False, id="server-closes-first"),
    pytest.param("both", False, id="both-close-at-once"),
    pytest.param("client", True, id="client-resets"),
    pytest.param("server", True, id="server-resets"),
]
