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

from .config import ExporterConfig, load_config
from .errors import TcplifeError
from .folding import FAMILIES, FoldOptions, Series, ephemeral_port_range
from .metrics import session_families
from .tracer import ProgramStats, SessionTracer, TracerOptions

log = logging.getLogger(__name__)

BPF_STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"

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
}


def fold_options(config: ExporterConfig) -> FoldOptions:
    ephemeral = ephemeral_port_range()
    low, high = ephemeral
    ephemeral_listed = sorted(p for p in config.labelled_ports if low <= p <= high)
    if ephemeral_listed:
        log.warning("ports.labelled: %s in the ephemeral range %d-%d get no label of their own",
                    ", ".join(map(str, ephemeral_listed)), low, high)
    return FoldOptions(
        duration_bounds_ns=tuple(round(b * 1e9) for b in config.duration_bounds),
        bytes_bounds=config.bytes_bounds,
        labelled_ports=config.labelled_ports - set(ephemeral_listed),
        auto_ports=config.auto_ports,
        auto_port_limit=config.auto_port_limit,
        ephemeral_ports=ephemeral,
        comm_label=config.comm_label,
        networks=config.remote_networks,
        max_label_sets=config.max_label_sets,
        families=(config.filter.family,) if config.filter.family else FAMILIES,
    )


class _Loaded:
    """A config and the program loaded with it (in place of ``replacing``'s)."""

    def __init__(self, config: ExporterConfig, cgroup_path: str | None,
                 replacing: _Loaded | None = None) -> None:
        self.config = config
        self.fold = fold_options(config)
        self.tracer = SessionTracer(TracerOptions(
            filter=config.filter,
            emit_records=False,
            fold=self.fold,
            max_sessions=config.max_open_sessions,
            cgroup_path=cgroup_path,
        ), replacing=replacing.tracer if replacing else None)


@dataclass(frozen=True)
class _Carried:
    """What programs replaced by reloads had folded, still part of the counters."""

    series: list[Series] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def plus(self, old: _Loaded) -> _Carried:
        """These values and ``old``'s final ones."""
        counters = dict(self.counters)
        for name, count in old.tracer.counters().items():
            counters[name] = counters.get(name, 0) + count
        return _Carried(self.series + old.tracer.folded().series(), counters)

    def with_counters(self, counters: dict[str, int]) -> dict[str, int]:
        return {name: self.counters.get(name, 0) + count for name, count in counters.items()}


class Exporter:
    """A prometheus_client collector over the loaded program; reloadable."""

    def __init__(self, config_path: str | None, cgroup_path: str | None = None) -> None:
        self._config_path = config_path
        self._cgroup_path = cgroup_path
        self._lock = threading.Lock()  # scrapes vs. swapping the program
        self._loaded = _Loaded(self._read_config(), cgroup_path)
        self._carried = _Carried()
        self._reload_ok = True
        self._reload_time = time.time()
        self._closed = False

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
                fresh = _Loaded(config, self._cgroup_path, replacing=self._loaded)
                with self._lock:
                    old, self._loaded = self._loaded, fresh
                    continued = fresh.fold.same_series_as(old.fold)
                    self._carried = self._carried.plus(old) if continued else _Carried()
                    old.tracer.close()
                    if self._closed:
                        fresh.tracer.close()
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
            self._loaded.tracer.close()

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; avoids a scrape at start

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._closed:
                raise TcplifeError("the exporter is shutting down")
            loaded = self._loaded
            reader = loaded.tracer.folded()
            series = reader.series()
            families = session_families(loaded.fold, self._carried.series + series,
                                        reader.open_sessions(), reader.auto_labelled_ports(),
                                        reader.loaded_ns)
            counters = self._carried.with_counters(loaded.tracer.counters())
            stats = loaded.tracer.program_stats()
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
