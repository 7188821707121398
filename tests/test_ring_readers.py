"""Both ring-buffer consumers deliver every record: the mapped one (x86-64) and
libbpf's (other architectures)."""

from __future__ import annotations

import socket
import time

import pytest

from tcplife_exporter import ringbuf
from tcplife_exporter.tracer import SessionFilter, SessionTracer, TracerOptions

from .traffic import Load, free_port, run_load


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "libbpf"])
def test_every_record_arrives(monkeypatch, mapped):
    if mapped and not ringbuf.supported():
        pytest.fail("the mapped reader is the one used on this machine: it must be tested")
    monkeypatch.setattr(ringbuf, "supported", lambda: mapped)
    port = free_port(socket.AF_INET6)
    seen = []
    options = TracerOptions(filter=SessionFilter(family=6), wakeup_bytes=4096)
    with SessionTracer(options, seen.append) as tracer:
        run_load(Load(port=port, count=300, client_sends=10, server_sends=20, server_addr="::1"))
        deadline = time.monotonic() + 10
        while len([s for s in seen if port in (s.lport, s.rport)]) < 600:
            assert time.monotonic() < deadline, f"{len(seen)} records arrived"
            tracer.poll(100)
    ours = [s for s in seen if port in (s.lport, s.rport)]
    assert len(ours) == 600
    assert {(s.tx_bytes, s.rx_bytes) for s in ours} == {(10, 20), (20, 10)}
