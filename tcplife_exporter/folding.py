"""Histograms folded in the kernel: the exporter's settings for them, and
how to read them back.

The BPF program gives each session its labels at its birth (bpf/labels.h)
and adds it at its close to the `series` map entry of its label set
(bpf/folding.h: buckets and sums, per CPU). This module translates the
exporter's configuration into those parts' `.rodata` and map contents, and
reads the maps back as plain Python values at scrape time, in batches.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .btf import Btf
from .cgroup_paths import CgroupPaths
from .config import ExporterConfig, IPNetwork
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject, num_possible_cpus
from .native import HISTOGRAMS, NativeBuckets, native_rodata, value_words, window
from .options import MAX_BOUNDS, port_bitmap

log = logging.getLogger(__name__)

DIRECTIONS = ("inbound", "outbound")
FAMILIES = (4, 6)
AUTO_PORTS_MAP = "labelled_ports"


@dataclass(frozen=True)
class LabelRules:
    """What a session's port and network labels mean. Sessions open across a
    reload keep their labels while these stay the same; otherwise the new
    program labels them again at their close."""

    listed_ports: frozenset[int]  # their own label always (none in the ephemeral range)
    auto_ports: bool
    auto_port_limit: int
    ephemeral_ports: tuple[int, int]  # inclusive; never a label in automatic mode
    # The network's position in this tuple + 1 is its index in the kernel.
    networks: tuple[tuple[str, tuple[IPNetwork, ...]], ...]

    @classmethod
    def of(cls, config: ExporterConfig) -> LabelRules:
        """The rules of ``config`` on this machine (its ephemeral port range now)."""
        low, high = ephemeral = ephemeral_port_range()
        ephemeral_listed = sorted(p for p in config.labelled_ports if low <= p <= high)
        if ephemeral_listed:
            log.warning("ports.labelled: %s in the ephemeral range %d-%d get no label of "
                        "their own", ", ".join(map(str, ephemeral_listed)), low, high)
        return cls(
            listed_ports=config.labelled_ports - set(ephemeral_listed),
            auto_ports=config.auto_ports,
            auto_port_limit=config.auto_port_limit,
            ephemeral_ports=ephemeral,
            networks=config.remote_networks,
        )

    def network_names(self) -> tuple[str, ...]:
        return tuple(name for name, _cidrs in self.networks)


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


def duration_bounds_ns(config: ExporterConfig) -> tuple[int, ...]:
    """The classic duration buckets' bounds; none with native histograms alone
    (every value in the +Inf slot: the count)."""
    return tuple(round(b * 1e9) for b in config.duration_bounds) if config.classic else ()


def bytes_bounds(config: ExporterConfig) -> tuple[int, ...]:
    return config.bytes_bounds if config.classic else ()


def fold_rodata(config: ExporterConfig, rules: LabelRules, rules_id: int) -> dict:
    """The settings of bpf/labels.h and bpf/folding.h. ``rules_id`` (1-255)
    tells the program's labels apart from those of programs before it."""
    low, high = rules.ephemeral_ports
    durations, sizes = duration_bounds_ns(config), bytes_bounds(config)
    return {
        "label_rules": rules_id,
        "label_networks": int(bool(rules.networks)),
        "auto_port_labels": int(rules.auto_ports),
        "port_label_bitmap": port_bitmap(rules.listed_ports),
        "ephemeral_low": low,
        "ephemeral_high": high,
        "fold_metrics": 1,
        "label_comm": int(config.comm_label),
        "label_cgroup": int(config.cgroup_label),
        "duration_nbounds": len(durations),
        "duration_bounds_ns": bounds_array(durations, MAX_BOUNDS),
        "bytes_nbounds": len(sizes),
        "bytes_bounds": bounds_array(sizes, MAX_BOUNDS),
        **native_rodata(config.native_settings()),
    }


def map_sizes(config: ExporterConfig) -> dict[str, int]:
    """Room for the label sets, plus one overflow series per direction and
    family (created by ``fill_maps``)."""
    cidrs = sum(len(cidrs) for _name, cidrs in config.remote_networks)
    return {
        "series": config.max_label_sets + len(DIRECTIONS) * len(FAMILIES),
        AUTO_PORTS_MAP: config.auto_port_limit,
        "networks": max(cidrs, 1),
    }


def value_sizes(btf: Btf, config: ExporterConfig) -> dict[str, int]:
    """Each label set's value: `struct series`, then the native histograms' counts."""
    size = StructLayout(btf, "series").size + 8 * value_words(config.native_settings())
    return {"series": size, "empty_series": size}


def preallocated_maps(config: ExporterConfig) -> tuple[str, ...]:
    """With native histograms, the label sets' entries exist from the start.
    Otherwise each is allocated at its first session, per CPU, in atomic context,
    from a free list the kernel keeps at 1 to 3 entries and refills without
    sleeping (kernel/bpf/memalloc.c): an entry of kilobytes then fails to come,
    now and then, under per-CPU memory pressure (-ENOMEM, its sessions counted
    in map_insert_failures{map="series"}; seen with 8.5 KiB values while other
    exporters ran)."""
    return ("series",) if config.native_settings() else ()


def network_key(layout: StructLayout, cidr: IPNetwork) -> bytes:
    """IPv4 networks go into the IPv6 trie as ::ffff:a.b.c.d/(96 + length)."""
    if cidr.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + cidr.network_address.packed)
        return layout.pack(prefixlen=96 + cidr.prefixlen, addr=mapped.packed)
    return layout.pack(prefixlen=cidr.prefixlen, addr=cidr.network_address.packed)


def fill_maps(obj: BpfObject, btf: Btf, config: ExporterConfig) -> None:
    """After load, before attach: remote networks and the overflow series."""
    network_layout = StructLayout(btf, "network_key")
    for index, (_name, cidrs) in enumerate(config.remote_networks, start=1):
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
    network: int  # 0: other, else 1 + index into LabelRules.networks
    comm: bytes  # b"" when the label is off or the owner is unknown
    cgroup: str | None  # the socket's cgroup path; None when the label is off or no path
    overflow: bool
    failed_handshakes: int
    duration_sum_ns: int
    sent_sum: int
    received_sum: int
    created_ns: int  # CLOCK_MONOTONIC time of the first fold; 0 if not known yet
    duration: list[int]
    sent: list[int]
    received: list[int]
    native: dict[str, NativeBuckets] | None  # by histogram, when native histograms are on


class FoldedReader:
    """Reads the kernel's folded series at scrape time."""

    def __init__(self, obj: BpfObject, btf: Btf, config: ExporterConfig,
                 cgroups: CgroupPaths | None) -> None:
        """``cgroups``: where the cgroup label is on, what turns its ids into paths."""
        self.loaded_ns = time.monotonic_ns()  # the program folds from about now
        self._obj = obj
        self._cgroups = cgroups
        self._key = StructLayout(btf, "series_key")
        self._value = StructLayout(btf, "series")
        self._cpus = num_possible_cpus()
        self._stride = obj.map_sizes("series")[1] // self._cpus  # one CPU's padded value
        self._directions = btf.enum_labels("direction", "DIRECTION_")
        self._summed = ("failed_handshakes", "duration_sum_ns", "sent_sum", "received_sum")
        self._histograms = ("duration", "sent", "received")
        native = config.native_settings()
        self._windows = {h: window(h, native) for h in HISTOGRAMS} if native else {}
        self._native_words = value_words(native)
        self._native_counts = struct.Struct(f"<{self._native_words}Q")

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
            totals["native"] = self._native(raw_value) if self._windows else None
            found.append(Series(
                direction=self._directions.get(key["direction"], "unknown"),
                family=key["family"],
                port=key["port"],
                network=key["network"],
                comm=key["comm"].split(b"\0", 1)[0],
                cgroup=(self._cgroups.path_or_none(key["cgroup_id"])
                        if self._cgroups and not key["overflow"] else None),
                overflow=bool(key["overflow"]),
                **totals,
            ))
        return found

    def _native(self, raw_value: bytes) -> dict[str, NativeBuckets]:
        """The native counts after each CPU's `struct series`, summed over CPUs."""
        per_cpu = [self._native_counts.unpack_from(raw_value, cpu * self._stride + self._value.size)
                   for cpu in range(self._cpus)]
        words = [sum(column) for column in zip(*per_cpu)]
        found, stride = {}, self._native_words // len(HISTOGRAMS)
        for position, histogram in enumerate(HISTOGRAMS):
            counts = words[position * stride:(position + 1) * stride]
            found[histogram] = NativeBuckets(self._windows[histogram], counts[0], counts[1:])
        return found
