"""Soak: tcplife-exporter under heavy churn for a long time, scraped every second.

Checks that every scrape succeeds, that the exporter's memory stops growing after
warm-up (the slope of its RSS over the rest of the run), and that at the end its
session counts equal the churn generator's exactly. Prints a summary and exits 1
if any check fails.

    make soak                          # 10 minutes, as root
    .venv/bin/python bench/soak.py --seconds 60 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import (
    CHURN,
    CHURN_BASE_PORT,
    CHURN_PORTS_PER_WORKER,
    EXPORTER_CONFIG,
    build_churn,
    churn_ports,
    expected_traced,
    exporter,
    exporter_tally,
    samples,
    scrape,
)

# The RSS slope is fitted after warm-up: the first quarter of the run, at least
# 20 s (the exporter's RSS settles within about 10 s of full churn).
WARM_UP_SHARE, WARM_UP_MIN_S = 0.25, 20
MAX_SLOPE_KB_PER_MIN = 64  # growth beyond this, sustained, would be a leak


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024


def slope_kb_per_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) points, in kB per minute."""
    times = [t for t, _ in points]
    sizes = [b for _, b in points]
    return statistics.linear_regression(times, sizes).slope * 60 / 1024


def soak(seconds: float, workers: int) -> dict:
    build_churn()
    # The churn's server ports get labels of their own: sessions of anything else
    # running on the host fold into port="other" and are not counted.
    ports = churn_ports(workers)
    config = EXPORTER_CONFIG + f"ports: {{labelled: [{', '.join(ports)}], auto: false}}\n"
    rss: list[tuple[float, int]] = []
    scrapes: list[float] = []
    failed: list[str] = []
    with exporter(config) as (proc, url):
        generator = subprocess.Popen([str(CHURN), "-w", str(workers), "-d", str(seconds), "-b",
                                      str(CHURN_BASE_PORT), "-p", str(CHURN_PORTS_PER_WORKER)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        try:
            start = time.monotonic()
            while generator.poll() is None:  # a scrape and an RSS sample a second
                tick = time.monotonic()
                try:
                    scrapes.append(scrape(url)[0])
                except OSError as err:
                    failed.append(f"{tick - start:.0f} s: {err}")
                rss.append((tick - start, rss_bytes(proc.pid)))
                time.sleep(max(0.0, 1 - (time.monotonic() - tick)))
        finally:
            if generator.poll() is None:  # interrupted
                generator.kill()
        output, errors = generator.communicate()
        if generator.returncode not in (0, 3):  # 3: some sessions failed; counted
            raise SystemExit(f"soak: churn failed ({generator.returncode}): {errors.strip()}")
        result = json.loads(output)
        time.sleep(0.5)  # the last closes
        final = samples(scrape(url)[1], set(ports))
    traced, _ = exporter_tally(final)
    # A churn session lost shows in the count above; these say why. Sessions still
    # open on the churn's ports and failed inserts fail the soak; the unseen
    # counters are for the whole host (other traffic counts too) and only reported.
    lost = int(final.get("tcplife_sessions_open", 0)
               + final.get("tcplife_exporter_map_insert_failures_total", 0))
    unseen = int(final.get("tcplife_exporter_sessions_birth_unseen_total", 0)
                 + final.get("tcplife_exporter_sessions_close_unseen_total", 0))
    expected = expected_traced(result["sessions"], result["failures"], result["failed"])
    warm_up = max(WARM_UP_SHARE * seconds, WARM_UP_MIN_S)
    steady = [p for p in rss if p[0] >= warm_up]
    return {
        "seconds": seconds, "sessions": result["sessions"], "rate": result["rate"],
        "churn_failures": result["failures"], "traced": traced, "expected": expected,
        "lost": lost, "unseen_any_port": unseen, "scrapes": len(scrapes), "failed_scrapes": failed,
        "scrape_ms_median": statistics.median(scrapes) * 1e3 if scrapes else 0.0,
        "scrape_ms_max": max(scrapes) * 1e3 if scrapes else 0.0,
        "rss_mb_start": rss[0][1] / 1e6, "rss_mb_end": rss[-1][1] / 1e6,
        "rss_mb_max": max(b for _, b in rss) / 1e6,
        "rss_slope_kb_per_min": slope_kb_per_min(steady) if len(steady) > 2 else 0.0,
        "rss_samples": rss,  # (seconds, bytes), one a scrape
    }


def verdict(run: dict) -> list[str]:
    """What went wrong, [] if nothing."""
    problems = [f"scrape failed at {what}" for what in run["failed_scrapes"]]
    if run["traced"] != run["expected"]:
        problems.append(f"traced {run['traced']:,} sessions, expected {run['expected']:,}")
    if run["lost"]:
        problems.append(f"{run['lost']:,} sessions left open or not tracked")
    if run["rss_slope_kb_per_min"] > MAX_SLOPE_KB_PER_MIN:
        problems.append(f"RSS grew {run['rss_slope_kb_per_min']:.1f} kB/min after warm-up")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("soak: run as root (it loads BPF programs)")
    # SIGTERM ends the soak like Ctrl-C: the exporter and the churn are stopped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    run = soak(args.seconds, args.workers)
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    print(f"Soak of {run['seconds']:g} s on {os.uname().release}: {run['sessions']:,} churn "
          f"sessions ({run['rate']:,.0f}/s), {run['churn_failures']} failed; "
          f"{run['traced']:,} traced of {run['expected']:,} expected, {run['lost']} lost "
          f"({run['unseen_any_port']} unseen on any port); "
          f"{run['scrapes']} scrapes, {len(run['failed_scrapes'])} failed, median "
          f"{run['scrape_ms_median']:.1f} ms, max {run['scrape_ms_max']:.1f} ms; RSS "
          f"{run['rss_mb_start']:.1f} MB at start, {run['rss_mb_max']:.1f} MB at most, "
          f"slope after warm-up {run['rss_slope_kb_per_min']:+.1f} kB/min.")
    problems = verdict(run)
    for problem in problems:
        print(f"soak: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
