"""A real Prometheus server (Debian package `prometheus`) scraping on loopback."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .traffic import free_port


class PrometheusServer:
    """Scrapes the given targets (every second by default) into a throwaway TSDB,
    evaluating ``rule_files`` at the same interval (a group's own interval aside);
    ``features`` go to --enable-feature, e.g. ["native-histograms"]."""

    def __init__(self, workdir: Path, targets: list[str], job: str = "tcplife",
                 interval_s: int = 1, features: Sequence[str] = (),
                 rule_files: Sequence[Path] = ()) -> None:
        self.port = free_port()
        self.workdir = workdir
        config = workdir / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {interval_s}s, evaluation_interval: {interval_s}s}}\n"
            f"rule_files: {json.dumps([str(path) for path in rule_files])}\n"
            f"scrape_configs:\n  - job_name: {job}\n"
            f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
        )
        self.argv = ["prometheus", f"--config.file={config}",
                     f"--storage.tsdb.path={workdir / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{self.port}"]
        if features:
            self.argv.append(f"--enable-feature={','.join(features)}")

    def __enter__(self) -> PrometheusServer:
        self._log = open(self.workdir / "prometheus.log", "w")  # closed in __exit__
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()  # a server that never answered is not left running
                raise AssertionError(f"prometheus did not start: {self.log()}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> list[dict]:
        """An instant query's vector: [{"metric": {...}, "value": [time, "text"]}]."""
        return self.api("query", query=promql)["result"]

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict]:
        """The query's result once it is non-empty (or the empty one at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
