"""The fast exposition writer writes exactly what prometheus_client writes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest, openmetrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.samples import Sample

from tcplife_exporter.exposition import exposition

HOSTILE = 'a"b\\c\nd}e\\xff{'


class _Fixed:
    def __init__(self, created: bool) -> None:
        self.created = 1733030400.25 if created else None

    def collect(self):
        counter = CounterMetricFamily("c", 'help with \\, "quotes" and\nnewline',
                                      labels=["port", "comm"])
        counter.add_metric(["80", HOSTILE], 3, created=self.created)
        counter.add_metric(["other", "plain"], 0)
        yield counter
        gauge = GaugeMetricFamily("g", "a gauge", labels=["z", "a"])
        gauge.add_metric(["last", "first"], 1.5)
        yield gauge
        yield GaugeMetricFamily("g_plain", "no labels", value=7)
        histogram = HistogramMetricFamily("h_seconds", "h", labels=["direction", "comm"])
        histogram.add_metric(["inbound", HOSTILE], [("0.005", 1), ("1.0", 3), ("+Inf", 4)], 2.5)
        if self.created:
            labels = {"direction": "inbound", "comm": HOSTILE}
            histogram.samples.append(Sample("h_seconds_created", labels, self.created))
        yield histogram
        yield InfoMetricFamily("build", "info", value={"version": "1.0", "python": "3"})


def _registry(created: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_Fixed(created))
    return registry


@pytest.mark.parametrize("created", [False, True])
def test_same_text_as_generate_latest_without_creation_times(created):
    """The text format has no creation times: none are written, not even as
    the extra gauges prometheus_client makes of them."""
    assert exposition(_registry(created)) == generate_latest(_registry(False))


def test_same_openmetrics_as_prometheus_client():
    written = exposition(_registry(True), openmetrics=True)
    assert written == openmetrics.exposition.generate_latest(_registry(True))
    assert b'c_created{comm="a\\"b' in written and written.endswith(b"# EOF\n")
