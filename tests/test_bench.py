"""The benchmark's parts keep working: the churn generator counts exactly, and a
short `bench/run.py` completes with the exporter's count exact."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers.tracing import REPO
from .helpers.traffic import build_churn

pytestmark = pytest.mark.bpf


def test_churn_counts_every_session_and_rejects_bad_arguments(tmp_path):
    binary = build_churn(tmp_path)
    for extra in ([], ["-6", "-C", "-s", "1000"]):
        done = subprocess.run([str(binary), "-w", "2", "-d", "0.5", "-b", "23000", *extra],
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout)
        assert result["sessions"] > 100 and result["failures"] == 0
    paced = json.loads(subprocess.run([str(binary), "-w", "1", "-d", "1", "-r", "50"],
                                      capture_output=True, text=True, check=True).stdout)
    assert 45 <= paced["sessions"] <= 51 and paced["seconds"] < 1.2
    bad = subprocess.run([str(binary), "-r", "fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a number" in bad.stderr


def test_pinned_churn_workers_run_on_one_cpu_each(tmp_path):
    binary = build_churn(tmp_path)
    cpus = os.sysconf("SC_NPROCESSORS_ONLN")
    workers = cpus + 1  # the last one shares CPU 0
    churn = subprocess.Popen([str(binary), "-w", str(workers), "-d", "2", "-b", "23000", "-P"],
                             stdout=subprocess.PIPE, text=True)
    try:
        tasks = Path(f"/proc/{churn.pid}/task")
        deadline = time.monotonic() + 1.5
        while len(list(tasks.iterdir())) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        allowed = sorted(re.search(r"^Cpus_allowed_list:\s+(\S+)$",
                                   (task / "status").read_text(), re.M).group(1)
                         for task in tasks.iterdir() if task.name != str(churn.pid))
    finally:
        result = json.loads(churn.communicate(timeout=10)[0])
    assert allowed == sorted([str(i % cpus) for i in range(workers)])
    assert result["sessions"] > 100 and result["failures"] == 0


def test_a_short_bench_run_completes_and_the_exporter_is_exact():
    """With --compare: this checkout's exporter again, run from the checkout
    path: both columns count every session."""
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats = sysctl.read_text()
    done = subprocess.run([sys.executable, "bench/run.py", "--rounds", "1", "--seconds", "1",
                           "--scrapes", "2", "--compare", str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sysctl.read_text() == stats
    assert re.search(r"A do-nothing sock_ops program .*: \d\.\d+ \(", done.stdout), done.stdout
    row = re.search(r"^\| sessions traced / expected \(all rounds\) \|(.*)\|$", done.stdout,
                    re.M)
    assert row, done.stdout
    cells = [cell.strip().split(" / ") for cell in row.group(1).split("|")]
    exporters = [cells[0], cells[2]]  # exporter, tcplife, exporter of --compare
    assert all(traced == expected and traced != "0" for traced, expected in exporters), \
        done.stdout


def test_a_short_cost_run_measures_every_contender(tmp_path):
    """bench/cost.py: each contender at a fixed rate and saturated, in one round."""
    raw = tmp_path / "cost.json"
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats = sysctl.read_text()
    done = subprocess.run([sys.executable, "bench/cost.py", "--rounds", "1", "--seconds", "1",
                           "--rates", "5000", "0", "--stats-rounds", "1", "--json", str(raw)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sysctl.read_text() == stats
    contenders = ("do-nothing sock_ops (floor)", "do-nothing tracepoint",
                  "bpftrace lifespan hist", "tcplife-exporter", "tcplife-exporter, native",
                  "tcplife > file in RAM")
    for contender in contenders:
        row = re.search(rf"^\| {re.escape(contender)} \| (-?[\d,]+) \(.*\) \| (\d\.\d+) \(",
                        done.stdout, re.M)
        assert row, (contender, done.stdout)
        assert 0.3 < float(row.group(2)) < 1.2, row.group(0)  # a throughput ratio
    # Paced: one worker starts a session every 0.2 ms for 1 s, with each contender
    # and in the churn alone next to it.
    runs = json.loads(raw.read_text())
    paced = [pair for pair in runs["pairs"] if pair["rate"] == 5000]
    assert len(paced) == len(contenders) and all(
        pair[run]["sessions"] == 5000 for pair in paced for run in ("tool", "alone")), paced
    # With bpf_stats: every contender's programs ran at least once per session.
    times = runs["program_times"]
    assert len(times) == len(contenders) and all(
        t["runs"] >= t["sessions"] == 5000 for t in times), times


def test_scrape_size_bench_folds_every_session_in_each_mode(tmp_path):
    """bench/scrape_size.py at 100 label sets, with a real Prometheus: it exits 1
    on any session not folded (native histograms lost some to allocation
    failures of new per-CPU entries before they were preallocated) or any
    native histogram whose buckets do not add up to its count."""
    report = tmp_path / "scrape_size.json"
    done = subprocess.run([sys.executable, "bench/scrape_size.py", "--ports", "25",
                           "--scrapes", "3", "--json", str(report)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())
    assert {row["histograms"] for row in rows} == {"classic", "native", "both"}
    assert all(row["tally"]["folded"] == row["made"] == 25 * 4 * 12 for row in rows)
