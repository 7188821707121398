"""The fast exposition writer writes exactly what prometheus_client writes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from tcplife_exporter.exposition import exposition

HOSTILE = 'a"b\\c\nd}e\\xff{'


class _Fixed:
    def collect(self):
        counter = CounterMetricFamily("c", "help with \\ and\nnewline", labels=["port", "comm"])
        counter.add_metric(["80", HOSTILE], 3)
        counter.add_metric(["other", "plain"], 0)
        yield counter
        gauge = GaugeMetricFamily("g", "a gauge", labels=["z", "a"])
        gauge.add_metric(["last", "first"], 1.5)
        yield gauge
        yield GaugeMetricFamily("g_plain", "no labels", value=7)
        histogram = HistogramMetricFamily("h_seconds", "h", labels=["direction", "comm"])
        histogram.add_metric(["inbound", HOSTILE], [("0.005", 1), ("1.0", 3), ("+Inf", 4)], 2.5)
        yield histogram
        yield InfoMetricFamily("build", "info", value={"version": "1.0", "python": "3"})


def test_same_text_as_generate_latest():
    registry = CollectorRegistry()
    registry.register(_Fixed())
    assert exposition(registry) == generate_latest(registry)
