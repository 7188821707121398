"""Native histograms: the kernel's bucket index against the exact formula, the
tables user space computes for it, and the sparse form the exposition sends.

The kernel's code (bpf/native.h) runs here as it is, in a small program
(tests/helpers/native_index.bpf.c) that indexes values the test chooses.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import socket
import subprocess
from pathlib import Path

import pytest

from tcplife_exporter.btf import Btf
from tcplife_exporter.libbpf import BpfObject, lib
from tcplife_exporter.native import (
    MAX_SCHEMA,
    MIN_SCHEMA,
    NativeBuckets,
    NativeSettings,
    Window,
    index_table,
    native_rodata,
    window,
)

from .helpers.exporting import ExporterProcess, select, value
from .helpers.protobuf_reader import Message, labels
from .helpers.traffic import Load, free_port, run_load

REPO = Path(__file__).resolve().parent.parent
CASES = 4096  # CASES in tests/helpers/native_index.bpf.c
NANOSECONDS = 10**9


def exact_index(value: int, units: int, schema: int) -> int:
    """Prometheus's bucket of value/units: the smallest i with
    value/units <= 2^(i / 2^schema), by integer comparisons only."""
    def holds(i: int) -> bool:  # value/units <= 2^(i / 2^schema)?
        if schema >= 0:
            n = 1 << schema
            left, right = value**n, units**n
        else:
            left, right, i = value, units, i << -schema
        return left << -i <= right if i < 0 else left <= right << i

    guess = math.ceil(math.log2(value / units) * 2.0**schema)
    while not holds(guess):
        guess += 1
    while holds(guess - 1):
        guess -= 1
    return guess


def sample_values(schema: int, seed: int) -> list[int]:
    """Powers of two and their neighbours (bytes' boundaries), decimal seconds
    and neighbours, values whose mantissa sits on or next to each boundary of
    the nanosecond table, and random values of every magnitude."""
    values = set()
    for bit in range(64):
        values.update({1 << bit, (1 << bit) + 1, (1 << bit) - 1})
    for power in range(20):
        values.update({10**power, 10**power + 1, 10**power - 1})
    _base, bounds = index_table(NANOSECONDS, max(schema, 0))
    shuffle = random.Random(seed)
    for bound in bounds:
        top = shuffle.randrange(1, 64)
        edge = bound >> (63 - top)
        values.update({edge - 1, edge, edge + 1})
    while len(values) < CASES:
        values.add(shuffle.getrandbits(shuffle.randrange(1, 65)))
    values.discard(0)
    values = {v for v in values if 0 < v < 1 << 64}
    return sorted(values)[:CASES]


class IndexProgram:
    """tests/helpers/native_index.bpf.c, built and loaded for one schema."""

    def __init__(self, obj_path: Path, schema: int) -> None:
        self.obj = BpfObject(str(obj_path))
        btf = Btf(self.obj.btf_ptr)
        data = self.obj.internal_map_data(".rodata")
        variables = btf.section_variables(".rodata")
        for name, setting in native_rodata(NativeSettings(schema=schema)).items():
            var = variables[name]
            raw = setting if isinstance(setting, bytes) else setting.to_bytes(var.size, "little")
            assert len(raw) == var.size, name
            data[var.offset:var.offset + var.size] = raw
        self.obj.load()
        self.bss = btf.section_variables(".bss")

    def indexes(self, values: list[int]) -> tuple[list[int], list[int]]:
        """Each value's index as nanoseconds and as bytes."""
        bss = (ctypes.c_char * sum(v.size for v in self.bss.values()))()
        where = self.bss["values"]
        padded = values + [0] * (CASES - len(values))
        bss[where.offset:where.offset + where.size] = b"".join(
            v.to_bytes(8, "little") for v in padded)
        self.obj.update(".bss", bytes(4), bytes(bss))
        run_once(self.obj.program_fd("index_values"))
        self.obj.lookup(".bss", ctypes.c_uint32(0), bss)
        found = []
        for name in ("duration_index", "bytes_index"):
            var = self.bss[name]
            raw = bytes(bss[var.offset:var.offset + var.size])
            found.append([int.from_bytes(raw[i * 8:i * 8 + 8], "little", signed=True)
                          for i in range(len(values))])
        return found[0], found[1]

    def close(self) -> None:
        self.obj.close()


class _TestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts, up to the fields used."""

    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def run_once(program_fd: int) -> None:
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    run = lib().bpf_prog_test_run_opts
    run.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
    assert run(program_fd, ctypes.byref(opts)) == 0, "BPF_PROG_TEST_RUN failed"


@pytest.fixture(scope="module")
def index_object(tmp_path_factory) -> Path:
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                             check=True).stdout.strip()
    path = tmp_path_factory.mktemp("native") / "native_index.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{machine}",
                    f"-I{REPO / 'bpf'}", "-c", str(REPO / "tests/helpers/native_index.bpf.c"),
                    "-o", str(path)], check=True)
    return path


@pytest.mark.bpf
@pytest.mark.parametrize("schema", range(MIN_SCHEMA, MAX_SCHEMA + 1))
def test_kernel_index_is_the_exact_formula(index_object, schema):
    """Over 4,096 values per schema (every boundary of bytes and of the
    nanosecond table, their neighbours, random magnitudes up to 2^64), the
    kernel's index equals ceil(log2(v) * 2^schema) computed exactly, for
    nanoseconds counted as seconds and for bytes."""
    values = sample_values(schema, seed=schema)
    program = IndexProgram(index_object, schema)
    try:
        durations, sizes = program.indexes(values)
    finally:
        program.close()
    wrong = [(v, got, exact_index(v, NANOSECONDS, schema))
             for v, got in zip(values, durations) if got != exact_index(v, NANOSECONDS, schema)]
    wrong += [(v, got, exact_index(v, 1, schema))
              for v, got in zip(values, sizes) if got != exact_index(v, 1, schema)]
    assert not wrong, f"(value, kernel, exact) at schema {schema}: {wrong[:10]}"


@pytest.mark.bpf
def test_values_on_a_power_of_two_land_where_prometheus_expects(index_object):
    """Bucket upper bounds are inclusive: 1 KiB is in the bucket ending at 1024
    (index 10 * 2^schema), one byte more in the next; 1 s and 2 s (as
    nanoseconds) end buckets 0 and 2^schema."""
    program = IndexProgram(index_object, 3)
    try:
        durations, sizes = program.indexes([1024, 1025, 1, 2, 10**9, 2 * 10**9, 10**9 + 1])
    finally:
        program.close()
    assert sizes[:4] == [80, 81, 0, 8]
    assert durations[4:] == [0, 8, 1]


def test_tables_hold_each_doublings_boundaries_in_fixed_point():
    """The bytes table at schema 3 is 2^(j/8) for j = 0..7, rounded down to 63
    fractional bits; the nanosecond one is offset by log2(10^9)'s fraction."""
    base, bounds = index_table(1, 3)
    assert base == 0
    assert bounds == [math.isqrt(math.isqrt(math.isqrt(2**(63 * 8 + j)))) for j in range(8)]
    assert bounds[0] == 1 << 63
    base, bounds = index_table(NANOSECONDS, 3)
    assert base == -239  # floor(-log2(10^9) * 8) + 1
    assert all(a < b for a, b in zip(bounds, bounds[1:]))


def test_windows_start_at_one_byte_and_a_microsecond():
    sent = window("sent", NativeSettings(schema=3, max_buckets=320))
    assert (sent.low, sent.count) == (0, 320)
    assert sent.zero_threshold == pytest.approx(2 ** (-1 / 8))
    assert sent.upper() == 2.0 ** (319 / 8)
    duration = window("duration", NativeSettings(schema=3, max_buckets=320))
    assert duration.low == -160  # the bucket ending at 2^-20 s
    assert duration.zero_threshold == pytest.approx(2 ** (-161 / 8))
    # Negative schemas: the bucket holding 2^-20 s, 16 doublings wide at -4.
    assert window("duration", NativeSettings(schema=-4, max_buckets=8)).low == -1


@pytest.mark.parametrize("counts, spans, deltas", [
    ([0, 0, 0], [], []),
    ([5, 0, 0], [(10, 1)], [5]),
    ([0, 3, 4, 0, 0, 0, 1], [(11, 2), (3, 1)], [3, 1, -3]),
    # A gap of up to two empty buckets joins the spans: fewer bytes than a new span.
    ([2, 0, 0, 2], [(10, 4)], [2, -2, 0, 2]),
    ([1, 0, 0, 0, 1], [(10, 1), (3, 1)], [1, 0]),
])
def test_sparse_form_is_spans_and_deltas(counts, spans, deltas):
    buckets = NativeBuckets(Window(3, 10, len(counts)), 0, counts)
    assert buckets.spans_and_deltas() == (spans, deltas)


def native_of(families: dict, name: str, **wanted: str) -> Message:
    (metric,) = [m for m in families[name].all("metric")
                 if all(labels(m).get(k) == v for k, v in wanted.items())]
    return metric.one("histogram")


def by_index(histogram: Message) -> dict[int, int]:
    """Bucket index -> count, from the spans and deltas."""
    counts, index, count, deltas = {}, 0, 0, iter(histogram.all("positive_delta"))
    for span in histogram.all("positive_span"):
        index += span.one("offset")
        for _ in range(span.one("length")):
            count += next(deltas)
            if count:
                counts[index] = count
            index += 1
    return counts


@pytest.mark.bpf
def test_exporter_folds_native_buckets_exactly_and_counts_what_passes_the_window(tmp_path):
    """At schema 0 with 8 buckets, the byte window holds 1 to 128 bytes: 100
    bytes fall in its last bucket, 1 in its first, 0 in the zero bucket, and
    1000 above it, into the last bucket and the self-metric, once per session
    and direction. Counts and sums stay exact; the classic part is unchanged."""
    port = free_port(socket.AF_INET6)
    config = f"""
histograms: both
native: {{schema: 0, max_buckets: 8}}
buckets: {{bytes: [0, 100, 1000]}}
ports: {{labelled: [{port}], auto: false}}
filters: {{family: ipv6, pid: {os.getpid()}}}
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=5, client_sends=1000, server_sends=100, server_addr="::1"))
        run_load(Load(port=port, count=3, client_sends=0, server_sends=1, server_addr="::1"))
        exporter.wait_until(lambda s: all(
            value(s, "tcplife_session_sent_bytes_count", direction=d, port=str(port),
                  family="ipv6") == 8 for d in ("inbound", "outbound")))
        found = exporter.scrape_protobuf()
        samples = exporter.scrape()

    limit = "tcplife_exporter_native_bucket_limit_observations_total"
    counters = {labels(m)["histogram"]: m.one("counter").one("value")
                for m in found[limit].all("metric")}
    assert (counters["sent"], counters["received"]) == (5, 5)
    # (histogram, direction) -> (zero bucket, {index: count}, sum)
    expected = {
        ("sent", "outbound"): (3, {7: 5}, 5000),
        ("received", "outbound"): (0, {0: 3, 7: 5}, 503),
        ("sent", "inbound"): (0, {0: 3, 7: 5}, 503),
        ("received", "inbound"): (3, {7: 5}, 5000),
    }
    for (histogram, direction), (zero, buckets, total) in expected.items():
        name = f"tcplife_session_{histogram}_bytes"
        native = native_of(found, name, direction=direction, port=str(port), family="ipv6")
        assert native.one("schema") == 0 and native.one("zero_threshold") == 0.5
        assert (native.one("zero_count"), by_index(native)) == (zero, buckets)
        assert (native.one("sample_count"), native.one("sample_sum")) == (8, total)
        classic = {b.one("upper_bound"): b.one("cumulative_count") for b in native.all("bucket")}
        text = {float(dict(lab)["le"]): v for lab, v in select(
            samples, f"{name}_bucket", direction=direction, port=str(port), family="ipv6").items()}
        assert classic == text
    duration = native_of(found, "tcplife_session_duration_seconds", direction="outbound",
                         port=str(port), family="ipv6")
    assert duration.one("zero_count") + sum(by_index(duration).values()) == 8
    assert all(-20 <= index <= -13 for index in by_index(duration))


@pytest.mark.bpf
def test_native_alone_shows_count_and_sum_in_text_and_no_classic_buckets(tmp_path):
    port = free_port(socket.AF_INET6)
    config = f"""
histograms: native
ports: {{labelled: [{port}], auto: false}}
filters: {{family: ipv6, pid: {os.getpid()}}}
"""
    with ExporterProcess(config, workdir=tmp_path) as exporter:
        run_load(Load(port=port, count=4, client_sends=1024, server_addr="::1"))
        labels_out = dict(direction="outbound", port=str(port), family="ipv6")
        samples = exporter.wait_until(
            lambda s: value(s, "tcplife_session_sent_bytes_count", **labels_out) == 4)
        found = exporter.scrape_protobuf()
    assert {dict(lab)["le"] for lab in select(
        samples, "tcplife_session_sent_bytes_bucket", **labels_out)} == {"+Inf"}
    native = native_of(found, "tcplife_session_sent_bytes", **labels_out)
    assert not native.all("bucket")
    # 1024 bytes end the bucket 10 * 2^3 of the default schema.
    assert (native.one("schema"), by_index(native)) == (3, {80: 4})
