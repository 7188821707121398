"""Exact payload bytes, durations and owners of real sessions on loopback."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest

from .helpers.peers import (
    CLOSES,
    Plan,
    assert_exact,
    assert_owned,
    assert_unknown_or_owned,
    reported,
    run_session,
)

pytestmark = pytest.mark.bpf

MS = 1_000_000


SIZES = [(0, 0), (1, 0), (0, 1), (12345, 5000), (4097, 65537)]


@pytest.mark.parametrize(("closer", "abort"), CLOSES)
@pytest.mark.parametrize(("client_sends", "server_sends"), SIZES)
@pytest.mark.parametrize("family", [4, 6])
def test_exact_bytes(tcplife, family, closer, abort, client_sends, server_sends):
    plan = Plan(client_sends=client_sends, server_sends=server_sends, closer=closer,
                abort=abort, family=family, server_addr="127.0.0.1" if family == 4 else "::1")
    client, server = assert_exact(tcplife, run_session(plan))
    assert client["family"] == server["family"] == family
    assert client["birth_seen"] and server["birth_seen"]


def test_ten_megabytes_each_way(tcplife):
    size = 10 * 1024 * 1024 + 7
    assert_exact(tcplife, run_session(Plan(client_sends=size, server_sends=size)))


@pytest.mark.parametrize(("closer", "abort"), CLOSES)
def test_duration_lies_within_what_both_ends_saw(tcplife, closer, abort):
    """Each end's lifespan starts at its birth (connect() for the client, the
    handshake's end for the server: both before that call returned) and ends at
    its CLOSE, which follows the first close() and, on loopback, comes before the
    last close() returns (the peer's segments are processed in the closer's
    softirq). Under emulation a handshake takes milliseconds: no fixed margin."""
    result = run_session(Plan(client_sends=100, server_sends=100, closer=closer, abort=abort,
                              hold_s=0.05))
    client, server = reported(tcplife, result)
    longest = result.end_ns - result.start_ns
    for record, end in ((client, result.client), (server, result.server)):
        shortest = result.first_close_ns - end.born_by_ns
        assert 50 * MS <= shortest <= record["duration_ns"] <= longest, (record, end, result)


@pytest.mark.parametrize(("closer", "abort"), CLOSES)
def test_owner_of_each_end(tcplife, closer, abort):
    result = run_session(Plan(client_sends=10, server_sends=10, closer=closer, abort=abort,
                              client_comm="tl-cli", server_comm="tl-srv"))
    client, server = reported(tcplife, result)
    # The client's owner is known from connect(); the server's from its own close().
    assert_owned(client, result.client)
    if abort and closer == "client":
        # The reset reaches the server's socket in softirq, in the client's
        # context on loopback: unknown unless the server held the socket lock
        # (it was inside recv()) and so processed the reset itself.
        assert_unknown_or_owned(server, result.server)
    else:
        assert_owned(server, result.server)


def tcp_counters(sock: socket.socket) -> tuple[int, int]:
    """tcpi_bytes_acked and tcpi_bytes_received from TCP_INFO."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    return struct.unpack_from("QQ", info, 120)


def test_fin_never_acknowledged(tcplife):
    # Our FIN waits behind data that the peer's full receive window never
    # takes; the peer then resets. Only what was acknowledged counts as sent.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    sender.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            sender.send(b"x" * 65536)
    time.sleep(0.2)
    sender.shutdown(socket.SHUT_WR)  # FIN_WAIT1, the FIN queued behind unsent data
    time.sleep(0.2)
    acked, _ = tcp_counters(sender)
    _, received = tcp_counters(receiver)
    assert acked - 1 == received, "the receiver acknowledged all it received"
    sent_port, peer_port = sender.getsockname()[1], sender.getpeername()[1]
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    receiver.close()
    sender.close()
    (record,) = tcplife.matching(sent_port, peer_port)
    assert (record["tx_bytes"], record["rx_bytes"]) == (received, 0), record
    (peer,) = tcplife.matching(peer_port, sent_port)
    assert (peer["tx_bytes"], peer["rx_bytes"]) == (0, received), peer


@pytest.mark.parametrize("client_family", [socket.AF_INET, socket.AF_INET6])
def test_ipv4_on_a_dual_stack_socket_is_reported_as_ipv4(tcplife, client_family):
    # An IPv6 socket talking to an IPv4 peer sends IPv4: report family 4, plain addresses.
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        target = "127.0.0.1" if client_family == socket.AF_INET else "::ffff:127.0.0.1"
        with socket.socket(client_family) as client:
            client.connect((target, port))
            client.sendall(b"abc")
            server, _ = listener.accept()
            with server:
                assert server.recv(3) == b"abc"
            client_port = client.getsockname()[1]
    for lport, rport in ((client_port, port), (port, client_port)):
        (record,) = tcplife.matching(lport, rport)
        assert (record["family"], record["laddr"], record["raddr"]) == (
            4, "127.0.0.1", "127.0.0.1"), record
