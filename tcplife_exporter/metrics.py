"""Prometheus metric families built from the kernel's folded series.

Label values are rendered here: ports, families, remote-network names,
process names and cgroups (by the config's rules). Process names are chosen
by any local user, so they are decoded without failing (invalid UTF-8 becomes
backslash escapes); label sets that render the same (process names, cgroups
rewritten alike) are merged, never emitted twice.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .cgroup_labels import cgroup_label
from .config import ExporterConfig
from .folding import DIRECTIONS, FAMILIES, LabelRules, Series, bytes_bounds, duration_bounds_ns
from .native import HISTOGRAMS, NativeBuckets, NativeHistogramFamily, window
from .session_table import OpenLabels

_CLOSE_ONLY = ("comm", "cgroup")  # labels of closed sessions only
OTHER = "other"
OVERFLOW = "overflow"
UNKNOWN_COMM = "unknown"
_FAMILY_NAMES = {4: "ipv4", 6: "ipv6"}
# Kernel times are CLOCK_MONOTONIC; `_created` is Unix time. Fixed once, so that
# a series' creation time reads the same at every scrape.
_MONOTONIC_TO_UNIX_NS = time.time_ns() - time.monotonic_ns()


@dataclass
class _Folded:
    """Series values summed over every kernel label set that renders the same."""

    failed_handshakes: int = 0
    duration_sum: int = 0  # nanoseconds
    sent_sum: int = 0
    received_sum: int = 0
    created_ns: int = 0  # CLOCK_MONOTONIC: since when these counters count; 0: unknown
    duration: list[int] | None = None
    sent: list[int] | None = None
    received: list[int] | None = None
    native: dict[str, NativeBuckets] | None = None  # by histogram

    def at_zero_since(self, created_ns: int, config: ExporterConfig) -> None:
        """Exposed, at zero where nothing was folded yet, since ``created_ns``."""
        self.duration = self.duration or [0] * (len(duration_bounds_ns(config)) + 1)
        self.sent = self.sent or [0] * (len(bytes_bounds(config)) + 1)
        self.received = self.received or [0] * (len(bytes_bounds(config)) + 1)
        native = config.native_settings()
        if native is not None and self.native is None:
            self.native = {h: NativeBuckets.empty(window(h, native)) for h in HISTOGRAMS}
        self._created_at(created_ns)

    def _created_at(self, created_ns: int) -> None:
        if created_ns and (not self.created_ns or created_ns < self.created_ns):
            self.created_ns = created_ns

    def created_seconds(self) -> float | None:
        """The creation time as Unix time, if known."""
        return (self.created_ns + _MONOTONIC_TO_UNIX_NS) / 1e9 if self.created_ns else None

    def add(self, series: Series) -> None:
        self.failed_handshakes += series.failed_handshakes
        self.duration_sum += series.duration_sum_ns
        self.sent_sum += series.sent_sum
        self.received_sum += series.received_sum
        self._created_at(series.created_ns)
        self.duration = _add_lists(self.duration, series.duration)
        self.sent = _add_lists(self.sent, series.sent)
        self.received = _add_lists(self.received, series.received)
        if series.native is not None:
            if self.native is None:
                self.native = {h: NativeBuckets.empty(b.window) for h, b in series.native.items()}
            for histogram, buckets in series.native.items():
                self.native[histogram].add(buckets)


def _add_lists(total: list[int] | None, more: list[int]) -> list[int]:
    return list(more) if total is None else [a + b for a, b in zip(total, more)]


class SessionLabels:
    """The label names in use and how the kernel's label sets render as values."""

    def __init__(self, config: ExporterConfig, rules: LabelRules) -> None:
        self._config = config
        self._rules = rules
        self.names = ["direction", "port", "family"]
        if config.comm_label:
            self.names.append("comm")
        if config.cgroup_label:
            self.names.append("cgroup")
        if rules.networks:
            self.names.append("remote_network")
        # Not kept for open sessions: comm is unknown at an inbound birth, and a
        # table slot has no room for the cgroup.
        self.open_names = [n for n in self.names if n not in _CLOSE_ONLY]

    def of_series(self, series: Series) -> tuple[str, ...]:
        values = [series.direction, _port(series.port, series.overflow),
                  _FAMILY_NAMES.get(series.family, str(series.family))]
        if self._config.comm_label:
            values.append(OVERFLOW if series.overflow else _comm(series.comm))
        if self._config.cgroup_label:
            values.append(OVERFLOW if series.overflow else cgroup_label(
                series.cgroup, self._config.cgroup_rewrites, self._config.cgroup_depth))
        if self._rules.networks:
            values.append(OVERFLOW if series.overflow
                          else _network_name(self._rules.network_names(), series.network))
        return tuple(values)

    def known_in_advance(self) -> list[tuple[str, ...]]:
        """Label sets of the listed ports, exposed at zero before any session closes:
        then rate() and increase() see the first sessions too. Not with the comm or
        cgroup label (neither a process name nor a cgroup is known in advance)."""
        if self._config.comm_label or self._config.cgroup_label:
            return []
        networks = [*self._rules.network_names(), OTHER]
        families = (self._config.filter.family,) if self._config.filter.family else FAMILIES
        known = []
        for direction in DIRECTIONS:
            for port in sorted(self._rules.listed_ports):
                for family in families:
                    values = (direction, str(port), _FAMILY_NAMES[family])
                    if self._rules.networks:
                        known += [(*values, network) for network in networks]
                    else:
                        known.append(values)
        return known

    def of_open(self, labels: OpenLabels, network_names: tuple[str, ...]) -> tuple[str, ...]:
        """Open sessions' labels as the kernel gave them; ``network_names``: those
        of the rules that gave them (an earlier config's, across a reload)."""
        values = [labels.direction, _port(labels.port, False),
                  _FAMILY_NAMES.get(labels.family, str(labels.family))]
        if self._rules.networks:
            values.append(_network_name(network_names, labels.network))
        return tuple(values)

    def open_labels_of(self, series_labels: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for n, v in zip(self.names, series_labels) if n not in _CLOSE_ONLY)


def _network_name(names: tuple[str, ...], index: int) -> str:
    return names[index - 1] if 0 < index <= len(names) else OTHER


def _port(port: int, overflow: bool) -> str:
    if overflow:
        return OVERFLOW
    return str(port) if port else OTHER


def _comm(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace") if raw else UNKNOWN_COMM


def _le_values(bounds: Sequence[float]) -> list[str]:
    return [floatToGoString(b) for b in bounds] + ["+Inf"]


def _add_histogram(family: NativeHistogramFamily, labels: tuple[str, ...], le: list[str],
                   counts: list[int], total: float, created: float | None) -> None:
    """Kernel slots are per bucket; Prometheus buckets count everything up to `le`."""
    buckets, running = [], 0
    for bound, count in zip(le, counts):
        running += count
        buckets.append((bound, running))
    family.add_metric(list(labels), buckets, total)
    if created is not None:  # right after its label set's samples, as OpenMetrics wants
        family.samples.append(Sample(f"{family.name}_created", family.samples[-1].labels,
                                     created))


def session_families(
    config: ExporterConfig,
    rules: LabelRules,
    series: Iterable[Series],
    open_sessions: Counter[OpenLabels],
    network_names: dict[int, tuple[str, ...]],
    loaded_ns: int,
) -> list[Metric]:
    """The session metrics of one scrape. ``network_names``: of every label rules
    id still in the table; ``loaded_ns``: when the running program was loaded
    (CLOCK_MONOTONIC), since when label sets known in advance are at zero."""
    labels = SessionLabels(config, rules)
    duration_bounds = duration_bounds_ns(config)
    folded: dict[tuple[str, ...], _Folded] = {}
    for one in series:
        if one.overflow and not (sum(one.duration) or one.failed_handshakes):
            continue  # pre-created and unused: the cap was never reached
        folded.setdefault(labels.of_series(one), _Folded()).add(one)
    for label_values in labels.known_in_advance():
        folded.setdefault(label_values, _Folded()).at_zero_since(loaded_ns, config)

    duration_le = _le_values([ns / 1e9 for ns in duration_bounds])
    bytes_le = _le_values(bytes_bounds(config))
    # (family, its `le` values, which field of _Folded, divisor of the sum to base units)
    histograms = [
        (NativeHistogramFamily(name, documentation, labels.names, config.classic), le, field,
         unit)
        for name, documentation, le, field, unit in (
            ("tcplife_session_duration_seconds",
             "Lifespan of closed TCP sessions: from connect(), or for accepted sessions "
             "the completed handshake, to the close.",
             duration_le, "duration", 1e9),
            ("tcplife_session_sent_bytes",
             "Payload bytes sent and acknowledged per closed TCP session.",
             bytes_le, "sent", 1),
            ("tcplife_session_received_bytes",
             "Payload bytes received per closed TCP session.",
             bytes_le, "received", 1),
        )
    ]
    failures = CounterMetricFamily(
        "tcplife_handshake_failures",
        "TCP connections closed before their handshake completed (refused, timed out, reset).",
        labels=labels.names)
    open_gauge = GaugeMetricFamily(
        "tcplife_sessions_open",
        "TCP sessions opened since the exporter started and not closed yet, by the labels "
        "given at their birth.",
        labels=labels.open_names)

    open_counts: dict[tuple[str, ...], int] = {}
    for label_values, values in folded.items():
        open_counts.setdefault(labels.open_labels_of(label_values), 0)
        created = values.created_seconds()
        for family, le, field, unit in histograms:
            _add_histogram(family, label_values, le, getattr(values, field),
                           getattr(values, f"{field}_sum") / unit, created)
            if values.native is not None:
                family.native[label_values] = values.native[field]
        failures.add_metric(list(label_values), values.failed_handshakes, created=created)
    for open_labels, count in open_sessions.items():
        key = labels.of_open(open_labels, network_names.get(open_labels.rules, ()))
        open_counts[key] = open_counts.get(key, 0) + count
    for label_values, count in sorted(open_counts.items()):
        open_gauge.add_metric(list(label_values), count)
    return [family for family, *_ in histograms] + [failures, open_gauge]
