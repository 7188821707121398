"""Batches of real TCP sessions on loopback, with known sizes and hold times.

Both ends run as threads of the test process, each thread with its own name
(prctl PR_SET_NAME) so that the `comm` label can be checked, including names
no sane program would choose.
"""

from __future__ import annotations

import ctypes
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tcplife_exporter.folding import ephemeral_port_range

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15


def set_thread_name(name: bytes) -> None:
    """Name the calling thread: the kernel's comm, at most 15 bytes."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


_handed_out: set[int] = set()


def free_port(family: int = socket.AF_INET) -> int:
    """A free port for a server, below the ephemeral range (so it can get a label),
    and never one this run handed out before: two calls in a row, with nothing
    bound yet, must not get the same port."""
    low, _high = ephemeral_port_range()
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    while True:
        port = random.randrange(max(low - 12000, 1024), low)
        if port in _handed_out:
            continue
        with socket.socket(family) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


@dataclass
class Load:
    """`count` sessions, one after another: the client sends, the server answers,
    the client holds the session open for `hold_s`, then closes first."""

    port: int
    count: int = 1
    client_sends: int = 0
    server_sends: int = 0
    hold_s: float = 0.0
    server_addr: str = "127.0.0.1"
    client_addr: str = ""  # bind the client here ("" lets the kernel choose)
    client_comm: bytes = b"tl-client"
    server_comm: bytes = b"tl-server"


def _receive_exactly(sock: socket.socket, size: int) -> None:
    while size > 0:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError(f"peer closed with {size} bytes still expected")
        size -= len(chunk)


def _shut_down(sock: socket.socket) -> None:
    """Send our FIN and wait for the peer's, so that both ends are closed before
    close() and every state change happens in this thread, not in whichever
    process drops the file's last reference (bench/churn.c, README "Closes in
    the VM agent's thread")."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(1 << 16):  # until the peer's FIN
        pass


def _serve(listener: socket.socket, load: Load, errors: list[BaseException]) -> None:
    set_thread_name(load.server_comm)
    try:
        for _ in range(load.count):
            conn, _peer = listener.accept()
            with conn:
                _receive_exactly(conn, load.client_sends)
                conn.sendall(b"s" * load.server_sends)
                _shut_down(conn)
    except BaseException as err:  # reported by run_load
        errors.append(err)


def run_load(load: Load) -> None:
    """Run the sessions; returns once both ends of every session are closed."""
    family = socket.AF_INET6 if ":" in load.server_addr else socket.AF_INET
    with socket.socket(family) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((load.server_addr, load.port))
        listener.listen(128)
        listener.settimeout(30)
        errors: list[BaseException] = []
        server = threading.Thread(target=_serve, args=(listener, load, errors))
        server.start()
        client = threading.Thread(target=_clients, args=(load, family, errors))
        client.start()
        client.join()
        server.join()
    if errors:
        raise errors[0]


def _clients(load: Load, family: int, errors: list[BaseException]) -> None:
    set_thread_name(load.client_comm)
    try:
        for _ in range(load.count):
            with socket.socket(family) as sock:
                if load.client_addr:
                    sock.bind((load.client_addr, 0))
                sock.connect((load.server_addr, load.port))
                sock.sendall(b"c" * load.client_sends)
                _receive_exactly(sock, load.server_sends)
                if load.hold_s:
                    time.sleep(load.hold_s)
                _shut_down(sock)
    except BaseException as err:
        errors.append(err)


def refused_connects(port: int, count: int, addr: str = "127.0.0.1") -> None:
    """Connections to a port nobody listens on: handshakes that fail."""
    for _ in range(count):
        with socket.socket() as sock:
            try:
                sock.connect((addr, port))
            except ConnectionRefusedError:
                continue
        raise AssertionError(f"something listens on {addr}:{port}")


def build_churn(directory: Path) -> Path:
    """bench/churn.c compiled into ``directory``: C-speed connection churn."""
    binary = directory / "churn"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-pthread",
                    str(Path(__file__).resolve().parents[2] / "bench" / "churn.c"),
                    "-o", str(binary)], check=True)
    return binary
