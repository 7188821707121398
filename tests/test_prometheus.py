"""A real Prometheus server scrapes the exporter while sessions of known lifespans run."""

from __future__ import annotations

import socket
import threading
import time

from .exporting import ExporterProcess
from .prometheus_server import PrometheusServer
from .traffic import Load, free_port, run_load

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
