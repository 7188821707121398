"""Run ``tcplife-exporter`` as a user would, and scrape it."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .protobuf_reader import Message, families
from .tracing import ToolProcess
from .traffic import free_port

EXPORTER = (sys.executable, "-m", "tcplife_exporter.exporter_cli")

Samples = dict[tuple[str, frozenset], float]


# What Prometheus 2.42 sends with --enable-feature=native-histograms.
PROTOBUF_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,"
    "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class ExporterProcess(ToolProcess):
    """A running exporter on a free loopback port, optionally with a config file."""

    ready_text = "msg=\"listening on"
    command = EXPORTER

    def __init__(self, config: str | None = None, args: list[str] = (),
                 workdir: Path | None = None, **kwargs) -> None:
        self.port = free_port()
        argv = ["--web.listen-address", f"127.0.0.1:{self.port}", *args]
        if config is not None:
            assert workdir is not None, "a config needs a directory to live in"
            self.config_path = workdir / "config.yaml"
            self.config_path.write_text(config)
            argv += ["--config.file", str(self.config_path)]
        super().__init__(argv, **kwargs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.read().decode()

    def scrape(self) -> Samples:
        return parse_samples(self.scrape_text())

    def scrape_protobuf(self) -> dict[str, Message]:
        """The families of a scrape in the protobuf format, as Prometheus with
        native histograms asks for it."""
        request = urllib.request.Request(self.url, headers={"Accept": PROTOBUF_ACCEPT})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/vnd.google.protobuf")
            return families(response.read())

    def wait_until(self, predicate: Callable[[Samples], bool], timeout: float = 10) -> Samples:
        """A scrape for which ``predicate`` holds, or the last one at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            if predicate(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.1)


def parse_samples(text: str) -> Samples:
    """(sample name, labels) -> value, through prometheus_client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def select(samples: Samples, name: str, **labels: str) -> dict[frozenset, float]:
    """The series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and wanted <= lab}


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(select(samples, name, **labels).values())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one series of ``name`` with exactly these labels (0 if absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
