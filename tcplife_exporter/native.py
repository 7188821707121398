"""Native histograms folded in the kernel: the schema's tables for the
program's `.rodata` (bpf/native.h), and the folded counts read back as
Prometheus's sparse buckets.

Prometheus's bucket i of schema s holds the values in
(2^((i-1)/2^s), 2^(i/2^s)]. The kernel finds a value's index with integers
only: the position of its highest set bit, then a binary search of its
mantissa (as a 64-bit fixed-point number in [1, 2)) in a table of the
schema's boundaries inside one doubling. Counted in nanoseconds, a duration
in seconds sits log2(10^9) * 2^s buckets lower, a fraction included: the
table carries that offset's fraction, rounded down to 63 bits, which is exact
(the mantissa is an integer in the same fixed point, so comparing it with a
boundary or with the boundary's floor gives the same answer).

Each label set keeps a window of ``max_buckets`` buckets per histogram,
above a zero bucket: 1 byte and 2^-20 s (0.95 microseconds) lie in the
window's first bucket. A value above the window's last bucket is counted
there, and in a self-metric: its histogram's count and sum stay exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.core import HistogramMetricFamily

NATIVE_TABLE = 256  # boundaries per doubling at schema 8: NATIVE_TABLE in bpf/tcplife.h
NATIVE_ROWS = 4  # rows of the per-histogram settings: NATIVE_ROWS in bpf/tcplife.h
MIN_SCHEMA, MAX_SCHEMA = -4, 8
# What a histogram's kernel value counts in (a divisor to base units), and the
# smallest value its window must hold, in base units as 2^exponent.
HISTOGRAMS = ("duration", "sent", "received")
_UNITS = {"duration": 10**9, "sent": 1, "received": 1}
_FLOOR_EXPONENT = {"duration": -20, "sent": 0, "received": 0}  # 2^-20 s: 0.95 us; 1 byte


@dataclass(frozen=True)
class NativeSettings:
    schema: int = 3
    max_buckets: int = 320  # per histogram and label set: 40 doublings at schema 3


def _root(value: int, schema: int) -> int:
    """floor(value^(1/2^schema)): nested integer square roots are exact."""
    for _ in range(schema):
        value = math.isqrt(value)
    return value


def index_table(units: int, schema: int) -> tuple[int, list[int]]:
    """For values counted in 1/``units`` of the base unit, at ``schema`` >= 0:
    (base, bounds) such that the value v's bucket index is
    e * 2^schema + base + #{bound < v << (63 - e)}, e the highest set bit of v."""
    n = 1 << schema
    # floor(log2(1/units) * n), and whether that offset has a fraction.
    power = units**n
    whole = -(power - 1).bit_length()
    first = 0 if power & (power - 1) == 0 else 1
    bounds = []
    for j in range(n):
        # units * 2^(63 + (first + j + whole) / n): its n-th power, rooted.
        bounds.append(_root(power << (63 * n + first + j + whole), schema))
    assert all(1 << 63 <= b < 1 << 64 for b in bounds), "a mantissa boundary outside [1, 2)"
    return whole + first, bounds


@dataclass(frozen=True)
class Window:
    """One histogram's buckets in a label set: the zero bucket, then
    ``count`` buckets from index ``low``."""

    schema: int
    low: int
    count: int

    @property
    def zero_threshold(self) -> float:
        """The zero bucket's upper bound: the lower bound of the window's first bucket."""
        return 2.0 ** ((self.low - 1) / 2.0**self.schema)

    def upper(self) -> float:
        """The last bucket's upper bound, in base units."""
        return 2.0 ** ((self.low + self.count - 1) / 2.0**self.schema)


def window(histogram: str, settings: NativeSettings) -> Window:
    # The bucket holding 2^floor_exponent: its index, exactly (a power of two).
    low = math.ceil(_FLOOR_EXPONENT[histogram] * 2.0**settings.schema)
    return Window(settings.schema, low, settings.max_buckets)


def native_rodata(settings: NativeSettings | None) -> dict[str, int | bytes]:
    """The settings of bpf/native.h; None: native histograms off."""
    if settings is None:
        return {"native_nbuckets": 0}
    table_schema = max(settings.schema, 0)
    bases, lows, tables = [], [], []
    for histogram in HISTOGRAMS:
        base, bounds = index_table(_UNITS[histogram], table_schema)
        bases.append(base)
        lows.append(window(histogram, settings).low)
        # Padded with all ones: above every mantissa (bpf/native.h searches them all).
        tables.append(bounds + [(1 << 64) - 1] * (NATIVE_TABLE - len(bounds)))
    unused = NATIVE_ROWS - len(HISTOGRAMS)  # rows only there for the kernel's index mask
    bases, lows = bases + [0] * unused, lows + [0] * unused
    tables += [[0] * NATIVE_TABLE] * unused
    return {
        "native_nbuckets": settings.max_buckets,
        "native_table_schema": table_schema,
        "native_coarsen": max(-settings.schema, 0),
        "native_base": b"".join(v.to_bytes(8, "little", signed=True) for v in bases),
        "native_low": b"".join(v.to_bytes(8, "little", signed=True) for v in lows),
        "native_bounds": b"".join(b.to_bytes(8, "little") for t in tables for b in t),
    }


def value_words(settings: NativeSettings | None) -> int:
    """The 64-bit counts each label set's value carries after `struct series`."""
    return len(HISTOGRAMS) * (settings.max_buckets + 1) if settings else 0


@dataclass
class NativeBuckets:
    """One histogram of one label set: the zero bucket's count, then the window's."""

    window: Window
    zero_count: int
    counts: list[int]

    @classmethod
    def empty(cls, window: Window) -> NativeBuckets:
        return cls(window, 0, [0] * window.count)

    def add(self, other: NativeBuckets) -> None:
        self.zero_count += other.zero_count
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]

    def spans_and_deltas(self) -> tuple[list[tuple[int, int]], list[int]]:
        """Prometheus's sparse form: runs of buckets as (offset from the previous
        run's end, length), and each count as the difference from the one before.
        Runs join over gaps of up to two empty buckets (cheaper than a new span)."""
        spans: list[tuple[int, int]] = []
        deltas: list[int] = []
        previous_count, end = 0, None  # end: index after the last bucket written
        counts = self.counts
        for position in [p for p, count in enumerate(counts) if count]:  # few of many
            count, index = counts[position], self.window.low + position
            if end is not None and index - end <= 2:
                for _ in range(index - end):  # fill the gap with empty buckets
                    deltas.append(-previous_count)
                    previous_count = 0
                offset, length = spans[-1]
                spans[-1] = (offset, length + index - end + 1)
            else:
                spans.append((index - (end if end is not None else 0), 1))
            deltas.append(count - previous_count)
            previous_count, end = count, index + 1
        return spans, deltas


class NativeHistogramFamily(HistogramMetricFamily):
    """A histogram family whose label sets also carry native buckets (by their
    label values, in the family's label order). The text formats show the
    classic part; the protobuf format both, or the native part alone where
    ``classic`` is off."""

    def __init__(self, name: str, documentation: str, labels: list[str], classic: bool) -> None:
        super().__init__(name, documentation, labels=labels)
        self.classic = classic
        self.native: dict[tuple[str, ...], NativeBuckets] = {}
