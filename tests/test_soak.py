"""The soak's short version: a minute of full churn with a scrape every second
(bench/soak.py; `make soak` runs it for ten minutes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers.tracing import REPO

pytestmark = pytest.mark.bpf


def test_a_minute_of_churn_every_scrape_answers_memory_flat_counts_exact(tmp_path):
    figures = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "bench/soak.py", "--seconds", "60", "--json",
                           str(figures)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = json.loads(figures.read_text())
    assert run["sessions"] > 100_000 and run["churn_failures"] == 0
    assert run["traced"] == run["expected"] and run["lost"] == 0
    assert run["scrapes"] >= 55 and not run["failed_scrapes"]
