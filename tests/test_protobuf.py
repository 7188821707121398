"""The delimited protobuf exposition, read back by a reader written from
metrics.proto (tests/helpers/protobuf_reader.py)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tcplife_exporter.native import NativeBuckets, NativeHistogramFamily, Window
from tcplife_exporter.protobuf import protobuf_exposition

from .helpers.protobuf_reader import families, labels


class Fixed:
    def __init__(self, *metrics) -> None:
        self.metrics = metrics

    def collect(self):
        return self.metrics


def encoded(*metrics) -> dict:
    registry = CollectorRegistry()
    registry.register(Fixed(*metrics))
    return families(protobuf_exposition(registry))


def histogram(classic: bool) -> NativeHistogramFamily:
    family = NativeHistogramFamily("tcplife_session_sent_bytes", "Bytes.", ["port"], classic)
    family.add_metric(["80"], [("100", 2), ("1000", 5), ("+Inf", 6)], 4321.0)
    family.native[("80",)] = NativeBuckets(Window(3, 0, 100), 1, [0] * 53 + [4, 1, 0, 0, 0, 1])
    family.add_metric(["443"], [("100", 0), ("1000", 0), ("+Inf", 0)], 0.0)
    family.native[("443",)] = NativeBuckets(Window(3, 0, 100), 0, [0] * 100)
    return family


@pytest.mark.parametrize("classic", [True, False])
def test_histogram_carries_native_buckets_and_classic_ones_where_on(classic):
    found = encoded(histogram(classic))["tcplife_session_sent_bytes"]
    assert found.one("type") == 4 and found.one("help") == "Bytes."
    by_port = {labels(m)["port"]: m.one("histogram") for m in found.all("metric")}
    busy, idle = by_port["80"], by_port["443"]
    assert (busy.one("sample_count"), busy.one("sample_sum")) == (6, 4321.0)
    assert busy.one("schema") == 3 and busy.one("zero_count") == 1
    assert busy.one("zero_threshold") == 2 ** (-1 / 8)
    spans = [(s.one("offset"), s.one("length")) for s in busy.all("positive_span")]
    assert spans == [(53, 2), (3, 1)] and busy.all("positive_delta") == [4, -3, 0]
    buckets = [(b.one("upper_bound"), b.one("cumulative_count")) for b in busy.all("bucket")]
    assert buckets == ([(100.0, 2), (1000.0, 5), (float("inf"), 6)] if classic else [])
    # No observation yet: still native, by a span of no buckets.
    assert [(s.one("offset"), s.one("length")) for s in idle.all("positive_span")] == [(0, 0)]


def test_counters_and_gauges_keep_their_names_values_and_creation_time():
    counter = CounterMetricFamily("tcplife_handshake_failures", "Failures.", labels=["port"])
    counter.add_metric(["22"], 7, created=1700000000.25)
    gauge = GaugeMetricFamily("tcplife_sessions_open", "Open.", labels=["port"])
    gauge.add_metric(["22"], 3)
    found = encoded(counter, gauge, GaugeMetricFamily("tcplife_empty", "None yet.", labels=["a"]))
    assert set(found) == {"tcplife_handshake_failures_total", "tcplife_sessions_open"}
    (metric,) = found["tcplife_handshake_failures_total"].all("metric")
    assert labels(metric) == {"port": "22"} and metric.one("counter").one("value") == 7
    created = metric.one("counter").one("created")
    assert (created.one("seconds"), created.one("nanos")) == (1700000000, 250_000_000)
    (metric,) = found["tcplife_sessions_open"].all("metric")
    assert found["tcplife_sessions_open"].one("type") == 1
    assert metric.one("gauge").one("value") == 3
