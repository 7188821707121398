"""A real Prometheus server scrapes the exporter while sessions of known lifespans run."""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time

import pytest

from .helpers.exporting import ExporterProcess, total, value
from .helpers.prometheus_server import PrometheusServer
from .helpers.traffic import Load, free_port, run_load

pytestmark = pytest.mark.bpf

HOSTILE_COMM = b'q"\\\n}\xfe'
MEDIAN_BY_PORT = ("histogram_quantile(0.5, sum by (le, port) "
                  "(rate(tcplife_session_duration_seconds_bucket[1m])))")


def churn(load: Load, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run_load(load)


def test_prometheus_sees_the_lifespans_per_port(tmp_path):
    fast, slow = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    config = (f"ports: {{labelled: [{fast}, {slow}], auto: false}}\n"
              "labels: {comm: true}\nfilters: {family: ipv6}\n")
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"]) as prometheus:
        loads = [
            Load(port=fast, count=10, hold_s=0.02, server_addr="::1", client_comm=HOSTILE_COMM),
            Load(port=slow, count=2, hold_s=0.2, server_addr="::1"),
        ]
        threads = [threading.Thread(target=churn, args=(load, 8)) for load in loads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2)  # at least one more scrape after the last session

        assert prometheus.query('up{job="tcplife"}')[0]["value"][1] == "1", prometheus.log()
        medians = {r["metric"]["port"]: float(r["value"][1])
                   for r in prometheus.wait_for(MEDIAN_BY_PORT)}
        # Held 20 ms and 200 ms: the default buckets around them are
        # (10 ms, 25 ms] and (100 ms, 250 ms].
        assert 0.010 < medians[str(fast)] <= 0.025, medians
        assert 0.100 < medians[str(slow)] <= 0.250, medians

        # The hostile process name arrived intact as one label value.
        series = prometheus.api("series", **{
            "match[]": f'tcplife_session_duration_seconds_count{{port="{fast}"}}'})
        comms = {s["comm"] for s in series}
        assert comms == {'q"\\\n}\\xfe', "tl-server"}, comms
        scrapes = prometheus.query('scrape_samples_scraped{job="tcplife"}')
        assert float(scrapes[0]["value"][1]) > 0


def test_a_listed_port_counts_from_its_first_session_in_automatic_mode(tmp_path):
    """A listed port keeps its own label although another port took the only
    automatic slot, and its series is there at zero before its first session:
    increase() over a window holding its first sessions equals their count."""
    listed, other = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    config = (f"ports: {{labelled: [{listed}], auto: true, auto_limit: 1}}\n"
              f"filters: {{remote_ports: [{listed}, {other}]}}\n")  # clients only
    count = (f'tcplife_session_duration_seconds_count'
             f'{{port="{listed}", family="ipv6", direction="outbound"}}')
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"]) as prometheus:
        zero = prometheus.wait_for(count)
        assert [float(r["value"][1]) for r in zero] == [0.0], zero
        run_load(Load(port=other, count=1, server_addr="::1"))  # takes the automatic slot
        run_load(Load(port=listed, count=5, server_addr="::1"))
        exporter.wait_until(lambda s: total(s, "tcplife_session_duration_seconds_count",
                                            port=str(listed)) == 5)
        assert prometheus.wait_for(f"{count} == 5")
        (last,) = prometheus.api("query", query=f"timestamp({count})")["result"]
        at = last["value"][1]  # a scrape's own time: no extrapolation past it
        (grown,) = prometheus.api("query", query=f"increase({count}[1m])", time=at)["result"]
        assert float(grown["value"][1]) == 5.0, grown
        limited = "tcplife_exporter_port_limit_sessions_total"
        assert value(exporter.scrape(), limited) == 0  # the listed port took no slot


def test_a_label_set_created_later_carries_its_creation_time(tmp_path):
    """A label set not known in advance (an automatic port) is exposed with its
    creation time: OpenMetrics `_created` samples, which Prometheus asks for.
    Prometheus 2.x (Debian's 2.42 here) stores them as series of their own;
    with created-timestamp-zero-ingestion newer releases put a zero there."""
    port = free_port()
    config = f"ports: {{auto: true}}\nfilters: {{remote_ports: [{port}]}}\n"  # clients only
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"]) as prometheus:
        assert prometheus.wait_for('up{job="tcplife"} == 1')
        before = time.time()
        run_load(Load(port=port, count=3))
        after = time.time()
        assert prometheus.wait_for(
            f'tcplife_session_duration_seconds_count{{port="{port}"}} == 3')
        for family in ("tcplife_session_duration_seconds", "tcplife_session_sent_bytes",
                       "tcplife_session_received_bytes", "tcplife_handshake_failures"):
            (created,) = prometheus.query(f'{family}_created{{port="{port}"}}')
            assert before <= float(created["value"][1]) <= after, (family, before, after)


def test_scrapes_reuse_one_connection(tmp_path):
    """Scraped every 11 s (longer than a request may take), the exporter keeps
    the scraper's connection: no scrape closes a TCP session, so the exporter's
    own port never shows up as a service."""
    config = "ports: {auto: true}\nfilters: {family: ipv4}\n"
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"],
                             interval_s=11) as prometheus:
        own = f'tcplife_session_duration_seconds_count{{port="{exporter.port}"}}'
        scrapes = 'count_over_time(up{job="tcplife"}[5m])'
        assert prometheus.wait_for(f"{scrapes} >= 3", timeout=45)  # 22 s and more apart
        assert not [r for r in prometheus.query(f"{own} > 0")], prometheus.query(own)
        assert total(exporter.scrape(), "tcplife_session_duration_seconds_count",
                     port=str(exporter.port)) == 0


def exact_bucket(value: float, schema: int) -> tuple[float, float]:
    """The native bucket (lower, upper] holding ``value``."""
    index = math.ceil(math.log2(value) * 2**schema)
    while value > 2 ** (index / 2**schema):  # float log2 may land one bucket low
        index += 1
    while value <= 2 ** ((index - 1) / 2**schema):
        index -= 1
    return 2 ** ((index - 1) / 2**schema), 2 ** (index / 2**schema)


def test_native_percentiles_within_a_bucket_and_exact_counts_and_sums(tmp_path):
    """Prometheus with native histograms scrapes the protobuf format. Per port,
    the median and p99 of the native histograms lie in the bucket of the true
    value (schema 3: a factor 2^(1/8)); counts and byte sums are exact; 1 KiB,
    on a boundary, ends its bucket."""
    spread, kib = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    schema = 3
    config = (f"histograms: native\nnative: {{schema: {schema}}}\n"
              f"ports: {{labelled: [{spread}, {kib}], auto: false}}\n"
              f"filters: {{family: ipv6, pid: {os.getpid()}}}\n")
    sizes = [round(100 * 1.17**k) for k in range(60)]  # 100 B to 1.1 MB
    holds = [0.002 * 1.07**k for k in range(60)]  # 2 ms to 108 ms
    random.Random(7).shuffle(holds)
    windows = []  # each session's lifespan lies in [hold, its window]
    with ExporterProcess(config, workdir=tmp_path) as exporter, \
            PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"],
                             features=("native-histograms",)) as prometheus:
        for size, hold in zip(sizes, holds):
            started = time.monotonic()
            run_load(Load(port=spread, client_sends=size, hold_s=hold, server_addr="::1"))
            windows.append(time.monotonic() - started)
        run_load(Load(port=kib, count=7, client_sends=1024, server_addr="::1"))

        def one(promql: str) -> float:
            (result,) = prometheus.wait_for(promql)
            return float(result["value"][1])

        out = f'direction="outbound",port="{spread}"'
        sent = f"tcplife_session_sent_bytes{{{out}}}"
        duration = f"tcplife_session_duration_seconds{{{out}}}"
        assert one(f"histogram_count({sent}) == 60") == 60, prometheus.log()
        assert one(f"histogram_sum({sent})") == sum(sizes)
        assert one(f"histogram_count({duration})") == 60
        for q in (0.5, 0.99):
            rank = math.ceil(q * 60) - 1  # the observation Prometheus's rank lands on
            lower, upper = exact_bucket(sorted(sizes)[rank], schema)
            assert lower < one(f"histogram_quantile({q}, {sent})") <= upper
            # The true lifespan is unknown, but lies between the hold and the window.
            lowest = exact_bucket(sorted(holds)[rank], schema)[0]
            highest = exact_bucket(sorted(windows)[rank], schema)[1]
            assert lowest < one(f"histogram_quantile({q}, {duration})") <= highest
        kib_sent = f'tcplife_session_sent_bytes{{direction="outbound",port="{kib}"}}'
        assert one(f"histogram_quantile(1, {kib_sent})") == 1024
        assert one(f"histogram_fraction(0, 1024, {kib_sent})") == 1
        # Classic series are not there: the exporter sent native histograms only.
        assert not prometheus.query(f'tcplife_session_sent_bytes_bucket{{port="{kib}"}}')
