"""Both ring-buffer consumers deliver every record: the mapped one (x86-64) and
libbpf's (other architectures)."""

from __future__ import annotations

import mmap
import os
import signal
import socket
import time
from typing import NoReturn

import pytest

from tcplife_exporter import inplace
from tcplife_exporter.options import SessionFilter
from tcplife_exporter.tracer import SessionTracer, TracerOptions

from .helpers.traffic import Load, free_port, run_load

pytestmark = pytest.mark.bpf


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "libbpf"])
def test_every_record_arrives(monkeypatch, mapped):
    if mapped and not inplace.loads_in_order():
        pytest.fail("the mapped reader is the one used on this machine: it must be tested")
    monkeypatch.setattr(inplace, "loads_in_order", lambda: mapped)
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


def _ring_buffers() -> dict[int, int]:
    """This process's BPF ring buffers (fdinfo map_type 27): a descriptor of
    each, by map id (libbpf holds several descriptors of one map)."""
    rings = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            with open(f"/proc/self/fdinfo/{name}") as info:
                fields = {key: value.strip() for key, _, value in
                          (line.partition(":") for line in info.read().splitlines())}
        except OSError:
            continue  # closed since listed (the listing's own descriptor)
        if fields.get("map_type") == "27":
            rings[int(fields["map_id"])] = int(name)
    return rings


def _consumer_position(ring_fd: int) -> memoryview:
    """The ring's consumer position, read as the kernel does: one 64-bit load."""
    page = mmap.mmap(ring_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    return memoryview(page).cast("Q")


def _watch_consumer_position(ring_fd: int, results: memoryview) -> NoReturn:
    """Count the reads that found the consumer position lower than an earlier
    one; results[1] is the highest seen."""
    os.nice(19)  # spins: the load must not wait for it
    position = _consumer_position(ring_fd)
    highest = 0
    while True:
        value = position[0]
        if value < highest:
            results[0] += 1
        elif value > highest:
            highest = results[1] = value


def test_the_consumer_position_is_never_seen_going_back():
    """The kernel reads the consumer position at every reservation: a value
    below the true one, even for nanoseconds, makes the ring look full and
    drops a record."""
    if not inplace.loads_in_order():
        pytest.fail("the mapped reader is the one used on this machine: it must be tested")
    port = free_port()
    seen = []
    options = TracerOptions(filter=SessionFilter(family=4), wakeup_bytes=4096)
    results = memoryview(mmap.mmap(-1, 16)).cast("Q")  # shared with the watcher
    with SessionTracer(options, seen.append) as tracer:
        [ring_fd] = _ring_buffers().values()
        watcher = os.fork()
        if watcher == 0:
            _watch_consumer_position(ring_fd, results)
        try:
            # Loads below the listen backlog: the watcher takes a CPU.
            for _ in range(30):
                run_load(Load(port=port, count=100))
                while tracer.poll(0):
                    pass
            deadline = time.monotonic() + 10  # the last closes may still be on their way
            while len([s for s in seen if port in (s.lport, s.rport)]) < 6000:
                assert time.monotonic() < deadline, f"{len(seen)} records arrived"
                tracer.poll(100)
            final = _consumer_position(ring_fd)[0]
            while results[1] < final:
                assert time.monotonic() < deadline, "the watcher did not keep up"
                time.sleep(0.01)
        finally:
            os.kill(watcher, signal.SIGKILL)
            os.waitpid(watcher, 0)
    ours = [s for s in seen if port in (s.lport, s.rport)]
    assert len(ours) == 6000
    assert results[0] == 0, f"{results[0]} reads found the consumer position gone back"
