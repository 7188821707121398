"""The exporter's YAML configuration: parsed, validated, and given defaults.

Every problem is reported as one line naming the file, the line where the
YAML parser knows it, the key's dotted path, and what is wrong. Unknown keys
are errors, with the closest known key suggested.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from .cgroup_labels import CgroupRewrite, template_problem
from .errors import TcplifeError
from .native import MAX_SCHEMA, MIN_SCHEMA, NativeSettings
from .options import MAX_BOUNDS, SessionFilter
from .yamlfile import Node, YamlReader, read_text

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Lifespans (config.example.yaml says why): requests up to 1 s in 1-2.5-5 steps,
# idle and keep-alive timeouts from 1 s to 10 min in steps of 1.3 to 2.5, then
# pools and streams up to a day.
DEFAULT_DURATION_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2, 5, 10, 15, 20, 30, 60, 90, 120, 300, 600, 1800, 3600, 7200, 86400,
)
# Payload bytes: 0 alone (connected, nothing sent: probes, health checks), then
# 1-2-5 steps from 100 B to 10 MB, then x10 to 1 GB.
DEFAULT_BYTES_BOUNDS = (
    0, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 100_000_000, 1_000_000_000,
)
# Label values the exporter itself uses; a network may not take them.
RESERVED_NETWORK_NAMES = ("other", "overflow")
MAX_NETWORK_CIDRS = 4096
MAX_CGROUP_REWRITES = 64
HISTOGRAM_KINDS = ("classic", "native", "both")
# A label set's value in the kernel, per CPU, stays below the per-CPU allocator's
# 32 KiB limit: 3 histograms x (1 + max_buckets) counts, plus the classic part.
MAX_NATIVE_BUCKETS = 1024


class ConfigError(TcplifeError):
    """The configuration file is unreadable or invalid."""


@dataclass(frozen=True)
class ExporterConfig:
    duration_bounds: tuple[float, ...] = DEFAULT_DURATION_BOUNDS  # seconds
    bytes_bounds: tuple[int, ...] = DEFAULT_BYTES_BOUNDS
    labelled_ports: frozenset[int] = frozenset()
    auto_ports: bool = True
    auto_port_limit: int = 64
    comm_label: bool = False
    cgroup_label: bool = False
    cgroup_depth: int = 0  # path components kept where no rewrite matches; 0: all
    cgroup_rewrites: tuple[CgroupRewrite, ...] = ()
    # (name, CIDRs) in file order: the name is the remote_network label value.
    remote_networks: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = ()
    filter: SessionFilter = field(default_factory=SessionFilter)
    max_label_sets: int = 1000
    histograms: str = "classic"  # one of HISTOGRAM_KINDS
    native: NativeSettings = field(default_factory=NativeSettings)

    @property
    def classic(self) -> bool:
        return self.histograms != "native"

    def native_settings(self) -> NativeSettings | None:
        """The native histograms' settings, if they are on."""
        return None if self.histograms == "classic" else self.native
    max_open_sessions: int = 65536


def _ports_list(reader: YamlReader, node: Node) -> frozenset[int]:
    return frozenset(reader.integer(item, 1, 65535) for item in reader.sequence(node, 65535))


def _bounds(reader: YamlReader, node: Node, to_number: Callable[[YamlReader, Node], Any]) -> tuple:
    items = reader.sequence(node, MAX_BOUNDS)
    if not items:
        raise reader.error(node, "needs at least one bucket bound")
    values = [to_number(reader, item) for item in items]
    for item, previous, value in zip(items[1:], values, values[1:]):
        if value <= previous:
            raise reader.error(item, f"bounds must increase strictly, but {value} follows "
                                     f"{previous}")
    return tuple(values)


def _seconds(reader: YamlReader, node: Node) -> float:
    value = reader.value(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise reader.error(node, f"must be a positive number of seconds, got {value!r}")
    if value > 1e9:
        raise reader.error(node, f"{value} s is more than 30 years")
    if round(value * 1e9) < 1:
        raise reader.error(node, f"{value} s is below the kernel clock's 1 ns")
    return value


def _byte_count(reader: YamlReader, node: Node) -> int:
    return reader.integer(node, 0, 2**63 - 1)


def load_config(path: str) -> ExporterConfig:
    """Read and validate the file at ``path``."""
    return parse_config(read_text(path, "config file", ConfigError), path)


def parse_config(text: str, source: str) -> ExporterConfig:
    reader = YamlReader(source, ConfigError)
    root = reader.root(text)
    if root is None:
        return ExporterConfig()
    settings: dict[str, Any] = {}
    for name, node in reader.mapping(root, _SECTIONS).items():
        if not reader.is_null(node):
            settings.update(_SECTIONS[name](reader, node))
    return ExporterConfig(**settings)


def _buckets(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["duration_seconds", "bytes"])
    settings = {}
    if "duration_seconds" in entries:
        bounds = _bounds(reader, entries["duration_seconds"], _seconds)
        nanoseconds = [round(b * 1e9) for b in bounds]
        if len(set(nanoseconds)) != len(nanoseconds):
            raise reader.error(entries["duration_seconds"], "two bounds are the same nanosecond")
        settings["duration_bounds"] = bounds
    if "bytes" in entries:
        settings["bytes_bounds"] = _bounds(reader, entries["bytes"], _byte_count)
    return settings


def _ports(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["labelled", "auto", "auto_limit"])
    settings: dict[str, Any] = {}
    if "labelled" in entries:
        settings["labelled_ports"] = _ports_list(reader, entries["labelled"])
    if "auto" in entries:
        settings["auto_ports"] = reader.boolean(entries["auto"])
    if "auto_limit" in entries:
        settings["auto_port_limit"] = reader.integer(entries["auto_limit"], 1, 65535)
    return settings


def _labels(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["comm", "cgroup", "cgroup_depth", "cgroup_rewrite"])
    settings: dict[str, Any] = {}
    if "comm" in entries:
        settings["comm_label"] = reader.boolean(entries["comm"])
    if "cgroup" in entries:
        settings["cgroup_label"] = reader.boolean(entries["cgroup"])
    if "cgroup_depth" in entries:
        settings["cgroup_depth"] = reader.integer(entries["cgroup_depth"], 0, 64)
    if "cgroup_rewrite" in entries:
        settings["cgroup_rewrites"] = tuple(
            _cgroup_rewrite(reader, item)
            for item in reader.sequence(entries["cgroup_rewrite"], MAX_CGROUP_REWRITES))
    return settings


def _cgroup_rewrite(reader: YamlReader, node: Node) -> CgroupRewrite:
    entries = reader.mapping(node, ["match", "replace"])
    for key in ("match", "replace"):
        if key not in entries:
            raise reader.error(node, f"needs '{key}'")
    try:
        pattern = re.compile(reader.string(entries["match"]))
    except re.error as err:
        raise reader.error(entries["match"], f"is not a regular expression: {err}") from None
    replace = reader.string(entries["replace"])
    problem = template_problem(pattern, replace)
    if problem:
        raise reader.error(entries["replace"], problem)
    return CgroupRewrite(pattern, replace)


def _remote_networks(reader: YamlReader, node: Node) -> dict[str, Any]:
    networks, owners = [], {}
    for name, cidrs_node in reader.mapping(node, None).items():
        if not name or name in RESERVED_NETWORK_NAMES:
            raise reader.error(cidrs_node, f"the name {name!r} is reserved or empty")
        cidrs = []
        for item in reader.sequence(cidrs_node, MAX_NETWORK_CIDRS):
            text = reader.value(item)
            try:
                cidr = ipaddress.ip_network(str(text), strict=True)
            except ValueError as err:
                raise reader.error(item, f"{text!r} is not a valid CIDR ({err})") from None
            if cidr in owners:
                raise reader.error(item, f"{cidr} is already in network {owners[cidr]!r}")
            owners[cidr] = name
            cidrs.append(cidr)
        if not cidrs:
            raise reader.error(cidrs_node, "needs at least one CIDR")
        networks.append((name, tuple(cidrs)))
    if len(owners) > MAX_NETWORK_CIDRS:
        raise reader.error(node, f"has {len(owners)} CIDRs; at most {MAX_NETWORK_CIDRS}")
    return {"remote_networks": tuple(networks)}


_FAMILIES = {"any": 0, "ipv4": 4, "ipv6": 6}


def _filters(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["family", "local_ports", "remote_ports", "pid"])
    settings: dict[str, Any] = {}
    if "family" in entries:
        family = reader.value(entries["family"])
        if family not in _FAMILIES:
            raise reader.error(entries["family"],
                               f"must be one of {', '.join(_FAMILIES)}, got {family!r}")
        settings["family"] = _FAMILIES[family]
    for key in ("local_ports", "remote_ports"):
        if key in entries:
            settings[key] = _ports_list(reader, entries[key])
    if "pid" in entries:
        settings["pid"] = reader.integer(entries["pid"], 0, 2**22)
    return {"filter": SessionFilter(**settings)}


def _limits(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["max_label_sets", "max_open_sessions"])
    settings = {}
    if "max_label_sets" in entries:
        settings["max_label_sets"] = reader.integer(entries["max_label_sets"], 1, 1_000_000)
    if "max_open_sessions" in entries:
        settings["max_open_sessions"] = reader.integer(
            entries["max_open_sessions"], 1, 1_048_576
        )
    return settings


def _histograms(reader: YamlReader, node: Node) -> dict[str, Any]:
    kind = reader.string(node)
    if kind not in HISTOGRAM_KINDS:
        raise reader.error(node, f"must be one of {', '.join(HISTOGRAM_KINDS)}, not {kind!r}")
    return {"histograms": kind}


def _native(reader: YamlReader, node: Node) -> dict[str, Any]:
    entries = reader.mapping(node, ["schema", "max_buckets"])
    defaults = NativeSettings()
    schema = (reader.integer(entries["schema"], MIN_SCHEMA, MAX_SCHEMA)
              if "schema" in entries else defaults.schema)
    max_buckets = (reader.integer(entries["max_buckets"], 1, MAX_NATIVE_BUCKETS)
                   if "max_buckets" in entries else defaults.max_buckets)
    return {"native": NativeSettings(schema, max_buckets)}


_SECTIONS: dict[str, Callable[[YamlReader, Node], dict[str, Any]]] = {
    "histograms": _histograms,
    "native": _native,
    "buckets": _buckets,
    "ports": _ports,
    "labels": _labels,
    "remote_networks": _remote_networks,
    "filters": _filters,
    "limits": _limits,
}
