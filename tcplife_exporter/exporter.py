"""The exporter's running state: config, loaded program, reloads, collection.

A reload that changes the config loads a second program with the new
settings and swaps it in for the first in one step, handing over the table of
open sessions: every session is folded by exactly one of the two. Counters go
on from the old program's final values when the histograms keep their buckets
and label meanings; otherwise they start again from zero (Prometheus's rate()
and increase() treat that as a counter reset).
"""

from __future__ import annotations

import functools
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import cgroup
from .cgroup_paths import CgroupPaths
from .config import ExporterConfig, load_config
from .errors import TcplifeError
from .folding import (
    AUTO_PORTS_MAP,
    FoldedReader,
    LabelRules,
    Series,
    fill_maps,
    fold_rodata,
    map_sizes,
    preallocated_maps,
    value_sizes,
)
from .libbpf import num_possible_cpus
from .metrics import session_families
from .native import HISTOGRAMS, window
from .program import ProgramStats, SessionProgram
from .records import no_records
from .session_table import OpenSessions

log = logging.getLogger(__name__)

BPF_STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
MAX_RULES_ID = 255  # struct session_labels' rules is one byte; 0 means none

# enum counter in bpf/tcplife.h -> (metric, help, labels). A counter missing
# here fails the exporter's tests, so none can be dropped unseen.
KERNEL_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "birth_unseen": (
        "tcplife_exporter_sessions_birth_unseen",
        "Closed sessions born before the running program loaded: counted, not folded.", {}),
    "series_overflow": (
        "tcplife_exporter_series_overflow_sessions",
        "Sessions folded into the overflow label set because max_label_sets was reached.", {}),
    "port_labels_full": (
        "tcplife_exporter_port_limit_sessions",
        "Sessions labelled port=\"other\" because ports.auto_limit was reached.", {}),
    "ringbuf_drops": (
        "tcplife_exporter_ringbuf_drops",
        "Session records dropped because the ring buffer was full.", {}),
    "session_map_full": (
        "tcplife_exporter_map_insert_failures",
        "Failed inserts into a BPF map, by map.", {"map": "sessions"}),
    "series_map_full": (
        "tcplife_exporter_map_insert_failures",
        "Failed inserts into a BPF map, by map.", {"map": "series"}),
    "close_unseen": (
        "tcplife_exporter_sessions_close_unseen",
        "Sessions whose close the program never saw (found when a new socket took the "
        "address of one still tracked): lost, and left in tcplife_sessions_open until then.",
        {}),
    **{f"native_{histogram}_above": (
        "tcplife_exporter_native_bucket_limit_observations",
        "Observations above the last bucket of their native histogram's window "
        "(native.max_buckets): counted in that bucket; count and sum stay exact.",
        {"histogram": histogram}) for histogram in HISTOGRAMS},
}


class _Loaded:
    """A config and the program loaded with it (in place of ``replacing``'s),
    with the readers of its folded series and open sessions."""

    def __init__(self, config: ExporterConfig, cgroup_path: str | None, rules: LabelRules,
                 rules_id: int, replacing: _Loaded | None = None) -> None:
        self.config = config
        self.rules = rules
        self.rules_id = rules_id
        program = self.program = SessionProgram(config.max_open_sessions)
        self.folded: FoldedReader | None = None
        self.open_sessions: OpenSessions | None = None
        try:
            records_rodata, records_size = no_records()
            sizes = value_sizes(program.btf, config)
            native = config.native_settings()
            if native:
                entries, cpus = map_sizes(config)["series"], num_possible_cpus()
                log.info("native histograms: buckets up to %g s and %g bytes; %d label sets "
                         "of %d bytes on %d CPUs take %.1f MiB of kernel memory, allocated "
                         "now", window("duration", native).upper(),
                         window("sent", native).upper(), entries, sizes["series"], cpus,
                         entries * sizes["series"] * cpus / 2**20)
            program.configure(
                {**config.filter.rodata(), **records_rodata,
                 **fold_rodata(config, rules, rules_id)},
                {**records_size, **map_sizes(config)}, sizes, preallocated_maps(config))
            if replacing is not None and program.take_table_of(replacing.program) \
                    and replacing.rules == rules:
                program.share_maps(replacing.program, (AUTO_PORTS_MAP,))  # labels mean the same
            program.load()
            fill_maps(program.obj, program.btf, config)
            # Paths below the hierarchy the program attaches to: in a container, the
            # host's mounted in (--cgroup.path), not the container's own namespace.
            cgroups = (CgroupPaths(cgroup.resolve(cgroup_path) if cgroup_path else None)
                       if config.cgroup_label else None)
            self.folded = FoldedReader(program.obj, program.btf, config, cgroups)
            self.open_sessions = OpenSessions(program.obj, program.btf, config.max_open_sessions)
            if replacing is None:
                program.attach(cgroup_path)
            else:
                program.take_over(replacing.program)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.open_sessions is not None:
            self.open_sessions.close()
        self.program.close()


def same_series(new: ExporterConfig, old: ExporterConfig) -> bool:
    """Whether series folded under ``old`` mean the same under ``new``: same
    buckets, and label values that name the same things."""
    return (new.duration_bounds == old.duration_bounds
            and new.bytes_bounds == old.bytes_bounds
            and new.histograms == old.histograms
            and new.native == old.native
            and new.remote_networks == old.remote_networks
            and new.comm_label == old.comm_label
            and new.cgroup_label == old.cgroup_label
            and new.cgroup_depth == old.cgroup_depth
            and new.cgroup_rewrites == old.cgroup_rewrites)


@dataclass(frozen=True)
class _Carried:
    """What programs replaced by reloads had folded, still part of the counters."""

    series: list[Series] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def plus(self, old: _Loaded) -> _Carried:
        """These values and ``old``'s final ones."""
        counters = dict(self.counters)
        for name, count in old.program.counters().items():
            counters[name] = counters.get(name, 0) + count
        return _Carried(self.series + old.folded.series(), counters)

    def with_counters(self, counters: dict[str, int]) -> dict[str, int]:
        return {name: self.counters.get(name, 0) + count for name, count in counters.items()}


class Exporter:
    """A prometheus_client collector over the loaded program; reloadable."""

    def __init__(self, config_path: str | None, cgroup_path: str | None = None) -> None:
        self._config_path = config_path
        self._cgroup_path = cgroup_path
        self._lock = threading.Lock()  # scrapes vs. swapping the program
        # Network names of each label rules id that open sessions may still carry.
        self._network_names: dict[int, tuple[str, ...]] = {}
        self._loaded = self._load(self._read_config())
        self._carried = _Carried()
        self._reload_ok = True
        self._reload_time = time.time()
        self._closed = False

    def _load(self, config: ExporterConfig, replacing: _Loaded | None = None) -> _Loaded:
        """The program for ``config``, with a new label rules id if its rules differ
        from those of the program it replaces."""
        rules = LabelRules.of(config)
        if replacing is not None and replacing.rules == rules:
            rules_id = replacing.rules_id
        else:
            rules_id = replacing.rules_id % MAX_RULES_ID + 1 if replacing else 1
        # Before the program runs: a scrape may count its sessions from then on.
        self._network_names[rules_id] = rules.network_names()
        return _Loaded(config, self._cgroup_path, rules, rules_id, replacing)

    def _read_config(self) -> ExporterConfig:
        return load_config(self._config_path) if self._config_path else ExporterConfig()

    def reload(self, before: Callable[[], None] | None = None) -> bool:
        """Re-read the config; on any error keep the running one. True on success.

        ``before`` runs first (e.g. reading another file); its TcplifeError fails
        the reload too, before anything changes.
        """
        try:
            if before is not None:
                before()
            config = self._read_config()
            if config != self._loaded.config:
                fresh = self._load(config, replacing=self._loaded)
                with self._lock:
                    old, self._loaded = self._loaded, fresh
                    continued = same_series(fresh.config, old.config)
                    self._carried = self._carried.plus(old) if continued else _Carried()
                    old.close()
                    if self._closed:
                        fresh.close()
                        return False
                log.info("config reloaded from %s; folded counters %s", self._config_path,
                         "go on" if continued else "restart (new buckets or label meanings)")
            else:
                log.info("config reloaded from %s; unchanged",
                         self._config_path or "the built-in defaults")
        except TcplifeError as err:
            log.error("config reload failed, still running the previous config: %s", err)
            self._reload_ok = False
            return False
        self._reload_ok = True
        self._reload_time = time.time()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._loaded.close()

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; avoids a scrape at start

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._closed:
                raise TcplifeError("the exporter is shutting down")
            loaded = self._loaded
            assert loaded.folded is not None and loaded.open_sessions is not None
            series = loaded.folded.series()
            families = session_families(loaded.config, loaded.rules, self._carried.series + series,
                                        loaded.open_sessions.count(), self._network_names,
                                        loaded.folded.loaded_ns)
            counters = self._carried.with_counters(loaded.program.counters())
            stats = loaded.program.program_stats()
        yield from families
        yield from self._self_families(loaded.config, counters, stats,
                                       sum(not s.overflow for s in series))

    def _self_families(self, config: ExporterConfig, counters: dict[str, int],
                       stats: ProgramStats, label_sets: int) -> Iterator[Metric]:
        build = GaugeMetricFamily("tcplife_exporter_build_info",
                                  "Version of the exporter and Python it runs on; always 1.",
                                  labels=["version", "python_version"])
        build.add_metric([version(), platform.python_version()], 1)
        yield build

        families: dict[str, CounterMetricFamily] = {}
        for name, value in counters.items():
            if name.startswith("native_") and config.native_settings() is None:
                continue  # a window's limit only where native histograms are on
            metric, documentation, labels = KERNEL_COUNTERS[name]
            family = families.setdefault(metric, CounterMetricFamily(
                metric, documentation, labels=list(labels)))
            family.add_metric(list(labels.values()), value)
        yield from families.values()

        if bpf_stats_enabled():
            yield CounterMetricFamily(
                "tcplife_exporter_bpf_run_seconds",
                "Time spent in the BPF program (only while kernel.bpf_stats_enabled=1).",
                value=stats.run_time_ns / 1e9)
            yield CounterMetricFamily(
                "tcplife_exporter_bpf_runs",
                "Runs of the BPF program (only while kernel.bpf_stats_enabled=1).",
                value=stats.run_count)

        yield GaugeMetricFamily("tcplife_exporter_label_sets",
                                "Label sets folded in the kernel, without the overflow ones.",
                                value=label_sets)
        yield GaugeMetricFamily("tcplife_exporter_label_sets_limit",
                                "limits.max_label_sets of the running config.",
                                value=config.max_label_sets)
        yield GaugeMetricFamily("tcplife_exporter_config_last_reload_successful",
                                "1 if the last config (re)load succeeded, else 0.",
                                value=int(self._reload_ok))
        yield GaugeMetricFamily("tcplife_exporter_config_last_reload_success_timestamp_seconds",
                                "When the config was last loaded successfully.",
                                value=self._reload_time)


def bpf_stats_enabled() -> bool:
    try:
        with open(BPF_STATS_SYSCTL) as file:
            return file.read().strip() == "1"
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def version() -> str:
    try:
        return metadata.version("tcplife-exporter")
    except metadata.PackageNotFoundError:
        return "unknown"
