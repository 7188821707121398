"""Histograms folded in the kernel: their settings and how to read them back.

The BPF program adds every closed session to the `series` map entry of its
label set (buckets and sums, per CPU). This module turns exporter settings
into the program's `.rodata` and map contents, and reads the maps back as
plain Python values at scrape time, in batches.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

from .btf import Btf
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject, num_possible_cpus
from .session_table import SessionTable

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
DIRECTIONS = ("inbound", "outbound")
FAMILIES = (4, 6)
RINGBUF_MIN_BYTES = 4096  # a page: the smallest ring buffer the kernel accepts


@dataclass(frozen=True)
class FoldOptions:
    """What the kernel folds sessions into. Fixed at load."""

    duration_bounds_ns: tuple[int, ...]
    bytes_bounds: tuple[int, ...]
    labelled_ports: frozenset[int]
    auto_ports: bool
    auto_port_limit: int
    ephemeral_ports: tuple[int, int]  # inclusive; never a label in automatic mode
    comm_label: bool
    # The network's position in this tuple + 1 is its index in the kernel.
    networks: tuple[tuple[str, tuple[IPNetwork, ...]], ...]
    max_label_sets: int
    families: tuple[int, ...] = FAMILIES  # the ones the filters let through

    def same_series_as(self, other: FoldOptions) -> bool:
        """Whether series folded under ``other`` mean the same here: same
        buckets, and label keys that name the same things."""
        return (self.duration_bounds_ns == other.duration_bounds_ns
                and self.bytes_bounds == other.bytes_bounds
                and self.networks == other.networks
                and self.comm_label == other.comm_label)


def ephemeral_port_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The kernel's range for automatically chosen local ports."""
    try:
        with open(path) as file:
            low, high = (int(part) for part in file.read().split())
    except (OSError, ValueError) as err:
        raise TcplifeError(f"cannot read the ephemeral port range from {path}: {err}") from None
    return low, high


def bounds_array(bounds: Iterable[int], slots: int) -> bytes:
    values = list(bounds)
    return b"".join(v.to_bytes(8, "little") for v in values + [0] * (slots - len(values)))


def fold_rodata(options: FoldOptions, port_bitmap: bytes, max_bounds: int) -> dict:
    low, high = options.ephemeral_ports
    return {
        "fold_metrics": 1,
        "label_comm": int(options.comm_label),
        "label_networks": int(bool(options.networks)),
        "auto_port_labels": int(options.auto_ports),
        "port_label_bitmap": port_bitmap,
        "ephemeral_low": low,
        "ephemeral_high": high,
        "duration_nbounds": len(options.duration_bounds_ns),
        "duration_bounds_ns": bounds_array(options.duration_bounds_ns, max_bounds),
        "bytes_nbounds": len(options.bytes_bounds),
        "bytes_bounds": bounds_array(options.bytes_bounds, max_bounds),
    }


def size_maps(obj: BpfObject, options: FoldOptions | None) -> None:
    """Before load: room for the label sets, plus one overflow series per
    direction and family, created by ``fill_maps``."""
    if options is None:
        return
    obj.set_max_entries("series", options.max_label_sets + len(DIRECTIONS) * len(FAMILIES))
    obj.set_max_entries("labelled_ports", options.auto_port_limit)
    cidrs = sum(len(cidrs) for _name, cidrs in options.networks)
    obj.set_max_entries("networks", max(cidrs, 1))


def network_key(layout: StructLayout, cidr: IPNetwork) -> bytes:
    """IPv4 networks go into the IPv6 trie as ::ffff:a.b.c.d/(96 + length)."""
    if cidr.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + cidr.network_address.packed)
        return layout.pack(prefixlen=96 + cidr.prefixlen, addr=mapped.packed)
    return layout.pack(prefixlen=cidr.prefixlen, addr=cidr.network_address.packed)


def fill_maps(obj: BpfObject, btf: Btf, options: FoldOptions | None) -> None:
    """After load, before attach: remote networks and the overflow series."""
    if options is None:
        return
    network_layout = StructLayout(btf, "network_key")
    for index, (_name, cidrs) in enumerate(options.networks, start=1):
        for cidr in cidrs:
            obj.update("networks", network_key(network_layout, cidr), index.to_bytes(2, "little"))
    key_layout = StructLayout(btf, "series_key")
    directions = btf.enum("direction")
    _key_size, value_size = obj.map_sizes("series")
    # At zero from now on: created now (on the first CPU's copy, as the kernel does).
    created = StructLayout(btf, "series").pack(created_ns=time.monotonic_ns())
    value = created + bytes(value_size - len(created))
    for direction in DIRECTIONS:
        for family in FAMILIES:
            key = key_layout.pack(
                direction=directions[f"DIRECTION_{direction.upper()}"], family=family, overflow=1
            )
            obj.update("series", key, value)


@dataclass
class Series:
    """One label set's folded values, summed over CPUs. Buckets are not cumulative."""

    direction: str
    family: int
    port: int  # 0: other
    network: int  # 0: other, else 1 + index into FoldOptions.networks
    comm: bytes  # b"" when the label is off or the owner is unknown
    overflow: bool
    failed_handshakes: int
    duration_sum_ns: int
    sent_sum: int
    received_sum: int
    created_ns: int  # CLOCK_MONOTONIC time of the first fold; 0 if not known yet
    duration: list[int]
    sent: list[int]
    received: list[int]


@dataclass(frozen=True)
class OpenSession:
    direction: str
    family: int
    service_port: int
    raddr: bytes  # 4 bytes for IPv4


class FoldedReader:
    """Reads the kernel's folded series and open sessions at scrape time."""

    def __init__(self, obj: BpfObject, btf: Btf, max_sessions: int) -> None:
        self.loaded_ns = time.monotonic_ns()  # the program folds from about now
        self._obj = obj
        self._key = StructLayout(btf, "series_key")
        self._value = StructLayout(btf, "series")
        self._sessions = SessionTable(obj, btf, max_sessions)
        self._cpus = num_possible_cpus()
        self._stride = obj.map_sizes("series")[1] // self._cpus  # one CPU's padded value
        self._directions = btf.enum_labels("direction", "DIRECTION_")
        self._summed = ("failed_handshakes", "duration_sum_ns", "sent_sum", "received_sum")
        self._histograms = ("duration", "sent", "received")

    def series(self) -> list[Series]:
        found = []
        for raw_key, raw_value in self._obj.read_all("series"):
            key = self._key.unpack(raw_key)
            per_cpu = [self._value.unpack(raw_value, cpu * self._stride)
                       for cpu in range(self._cpus)]
            totals = {name: sum(v[name] for v in per_cpu) for name in self._summed}
            totals["created_ns"] = max(v["created_ns"] for v in per_cpu)  # set on one CPU
            for name in self._histograms:
                totals[name] = [sum(column) for column in zip(*(v[name] for v in per_cpu))]
            found.append(Series(
                direction=self._direction(key["direction"]),
                family=key["family"],
                port=key["port"],
                network=key["network"],
                comm=key["comm"].split(b"\0", 1)[0],
                overflow=bool(key["overflow"]),
                **totals,
            ))
        return found

    def open_sessions(self) -> list[OpenSession]:
        """Sessions born since load and not closed yet."""
        found = []
        for session in self._sessions.sessions():
            if not session["birth_ns"]:
                continue  # born under an earlier program, seen only while closing
            family = session["family"]
            found.append(OpenSession(
                direction=self._direction(session["direction"]),
                family=family,
                service_port=session["service_port"],
                raddr=session["raddr"][: 4 if family == 4 else 16],
            ))
        return found

    def auto_labelled_ports(self) -> set[int]:
        """Ports the kernel has given a label of their own in automatic mode."""
        return {int.from_bytes(key, "little") for key, _ in self._obj.read_all("labelled_ports")}

    def _direction(self, value: int) -> str:
        return self._directions.get(value, "unknown")

    def close(self) -> None:
        self._sessions.close()
