"""Scrape size and series count of the session histograms: classic, native, both.

Gives 1,000 label sets real TCP sessions on loopback: --ports service ports, each
served on 127.0.0.1 and on ::1, every session counted at both of its ends (inbound
and outbound), --sessions sessions per label set with payloads and hold times spread
over several magnitudes (one seeded schedule, the same in every mode). Then runs the
exporter with `histograms: classic`, `native` and `both` in turn, each scraped in
the formats Prometheus asks for: classic as text 0.0.4 and OpenMetrics, native and
both as delimited protobuf (Prometheus's first choice with native histograms on).

Per mode and format: the body's bytes, plain and gzip-compressed (as the exporter
sends it when asked: Prometheus always asks), scrape time, and the series a
Prometheus stores for the tcplife_session_* families of the bench's label sets:
one per sample line in the text formats, one per histogram (Metric message) in
protobuf, where each carries native buckets. With Debian's `prometheus` (2.42)
installed, a real one scrapes each mode once and its stored series are counted too.
The sessions folded are compared with those made (the exporter's own count of
sessions it could not fold is shown), and each native histogram's buckets with its
count. Exits 1 on any difference.

Run as root from the repository, in about 1.5 minutes:

    .venv/bin/python bench/scrape_size.py
    .venv/bin/python bench/scrape_size.py --ports 25 --scrapes 3   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from run import REPO, exporter, scrape, spread

sys.path.insert(0, str(REPO))
from tests.helpers import protobuf_reader
from tests.helpers.prometheus_server import PrometheusServer
from tests.helpers.traffic import Load, run_load
from tests.helpers.traffic import free_port as service_port

SESSION_FAMILIES = "tcplife_session_"
ADDRESSES = ("127.0.0.1", "::1")
LABEL_SETS_PER_PORT = 2 * len(ADDRESSES)  # inbound and outbound, IPv4 and IPv6
NATIVE = "native: {schema: 3, max_buckets: 320}\n"  # the defaults, spelled out
# What Prometheus 2.42 sends: without native histograms (OpenMetrics first), with
# --enable-feature=native-histograms (protobuf first); text 0.0.4 is what
# scrapers without OpenMetrics get.
ACCEPT = {
    "text": "text/plain;version=0.0.4",
    "openmetrics": "application/openmetrics-text;version=1.0.0,"
                   "application/openmetrics-text;version=0.0.1;q=0.75,"
                   "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "protobuf": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,"
                "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
PLAN = {"classic": ("text", "openmetrics"), "native": ("protobuf",), "both": ("protobuf",)}
# A text sample of a session family: name, labels (no `}` in these label values), value.
_SAMPLE = re.compile(rb"^(tcplife_session_\w+)\{([^}]*)\} (\S+)", re.M)
_PORT = re.compile(rb'port="([^"]*)"')
_LE = re.compile(rb',?le="[^"]*"')
_INSERT_FAILURES = re.compile(rb'^tcplife_exporter_map_insert_failures_total\{map="series"\} (\S+)',
                              re.M)
DURATION = "tcplife_session_duration_seconds"
DURATION_COUNT = DURATION.encode() + b"_count"


@dataclass
class Tally:
    """What one exposition holds for the bench's label sets."""

    series: int = 0
    label_sets: int = 0
    folded: int = 0  # sessions in the duration histograms' counts
    populated: list[int] = field(default_factory=list)  # non-empty buckets per native histogram
    spans: list[int] = field(default_factory=list)  # spans per native histogram
    problems: list[str] = field(default_factory=list)


@dataclass
class Measured:
    histograms: str
    format: str
    tally: Tally
    body_bytes: int
    gzip_bytes: int
    plain_s: list[float]
    gzip_s: list[float]
    stored: int | None = None  # series a real Prometheus stored; None: not run
    made: int = 0  # sessions made, both ends of each counted
    insert_failures: int = 0  # sessions the exporter says it could not fold


def schedule(label: str, sessions: int) -> list[tuple[int, int, float]]:
    """(client bytes, server bytes, hold s) of one port and address's sessions:
    seeded by ``label``, so that every mode folds the same values."""
    rng = random.Random(label)
    return [(_payload(rng), _payload(rng), 10 ** rng.uniform(-4, 0)) for _ in range(sessions)]


def _payload(rng: random.Random) -> int:
    """A sixth carry nothing (probes, health checks); the rest 1 B to 1 MB, log-uniform."""
    return 0 if rng.random() < 1 / 6 else int(10 ** rng.uniform(0, 6))


def workloads(ports: list[int], sessions: int) -> list[list[Load]]:
    """One list per port and address: its sessions, to run one after another (each
    session brings its own listener, and a port takes one at a time)."""
    return [[Load(port, 1, sent, answered, hold, server_addr=address)
             for sent, answered, hold in schedule(f"{index} {address}", sessions)]
            for index, port in enumerate(ports) for address in ADDRESSES]


def _run_in_turn(loads: list[Load]) -> None:
    for load in loads:
        run_load(load)


def make_sessions(loads: list[list[Load]], parallel: int) -> float:
    """Runs every session (both ends closed on return); the seconds it took."""
    start = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(_run_in_turn, loads))  # list(): re-raises a session's error
    return time.monotonic() - start


def exporter_config(histograms: str, ports: list[int]) -> str:
    # Labelled ports only: the bench's label sets are all there is, with port="other"
    # for everything else (the scrapes' own sessions); room for both.
    return (f"histograms: {histograms}\n{NATIVE}"
            f"ports: {{labelled: [{', '.join(map(str, ports))}], auto: false}}\n"
            f"limits: {{max_label_sets: {len(ports) * LABEL_SETS_PER_PORT + 100}}}\n")


def format_of(body: bytes) -> str:
    """Which exposition format a body is in (checks the exporter's negotiation)."""
    if body.endswith(b"# EOF\n"):
        return "openmetrics"
    return "text" if body.startswith(b"# HELP ") else "protobuf"


def tally_text(body: bytes, ports: set[str]) -> Tally:
    """Sample lines of the session families: each is a series Prometheus stores
    (OpenMetrics `_created` lines too: Prometheus 2.42 keeps them as series)."""
    tally, label_sets = Tally(), set()
    for name, labels, value in _SAMPLE.findall(body):
        port = _PORT.search(labels)
        if not port or port.group(1).decode() not in ports:
            continue
        tally.series += 1
        label_sets.add(_LE.sub(b"", labels))
        if name == DURATION_COUNT:
            tally.folded += int(float(value))
    tally.label_sets = len(label_sets)
    return tally


def tally_protobuf(body: bytes, ports: set[str]) -> Tally:
    """Histograms (Metric messages) of the session families: with native buckets,
    each is one series in Prometheus, whether classic buckets come along or not."""
    tally, label_sets = Tally(), set()
    for name, family in protobuf_reader.families(body).items():
        if not name.startswith(SESSION_FAMILIES):
            continue
        for metric in family.all("metric"):
            labels = protobuf_reader.labels(metric)
            if labels.get("port") not in ports:
                continue
            tally.series += 1
            label_sets.add(tuple(sorted(labels.items())))
            histogram = metric.one("histogram")
            if name == DURATION:
                tally.folded += histogram.one("sample_count", 0)
            tally.problems += check_native(histogram, f"{name}{labels}", tally)
    tally.label_sets = len(label_sets)
    return tally


def check_native(histogram: protobuf_reader.Message, where: str, tally: Tally) -> list[str]:
    """Problems with one native histogram's buckets (against its count); its
    populated buckets and spans go into ``tally``."""
    if histogram.one("zero_threshold") is None:
        return [f"{where}: no native part"]
    counts, running = [], 0
    for delta in histogram.all("positive_delta"):
        running += delta
        counts.append(running)
    spans = histogram.all("positive_span")
    tally.populated.append(sum(1 for c in counts if c))
    tally.spans.append(len(spans))
    problems = []
    if sum(span.one("length", 0) for span in spans) != len(counts):
        problems.append(f"{where}: span lengths do not add up to the {len(counts)} deltas")
    if any(c < 0 for c in counts):
        problems.append(f"{where}: a negative bucket count")
    total, zero = histogram.one("sample_count", 0), histogram.one("zero_count", 0)
    if zero + sum(counts) != total:
        problems.append(f"{where}: count {total}, zero bucket {zero} + buckets {sum(counts)}")
    return problems


def insert_failures(url: str) -> int:
    """Sessions the exporter could not fold because creating their label set's
    entry in the kernel failed (the map not full): its own counter."""
    _took, body = scrape(url, {"Accept": ACCEPT["text"]})
    found = _INSERT_FAILURES.search(body)
    return int(float(found.group(1))) if found else 0


def stored_by_prometheus(url: str, fmt: str) -> tuple[int | None, str]:
    """(series, problem) of the bench's label sets in the session families that a
    real Prometheus stores from its first scrape; None where it cannot be asked for
    this format (text 0.0.4) or is not installed."""
    if fmt == "text" or not shutil.which("prometheus"):
        return None, ""
    match = '{__name__=~"tcplife_session_.+",port!~"other|overflow"}'
    with tempfile.TemporaryDirectory() as workdir:
        server = PrometheusServer(Path(workdir), [urllib.parse.urlsplit(url).netloc])
        if fmt == "protobuf":
            server.argv.append("--enable-feature=native-histograms")
        with server:
            # `up` is committed with the scrape's samples: then all their series exist
            # (the series API sees them while a scrape is still being appended).
            if server.wait_for('up{job="tcplife"} == 1', timeout=20):
                return len(server.api("series", **{"match[]": match})), ""
            targets = server.api("targets")["activeTargets"]
            return None, f"prometheus stored nothing: {[t['lastError'] for t in targets]}"


def measure(url: str, histograms: str, fmt: str, scrapes: int, ports: set[str]) -> Measured:
    """Scrapes, plain and gzipped in turn; sizes and series from the last of each."""
    plain_s, gzip_s = [], []
    for _ in range(scrapes):
        took, body = scrape(url, {"Accept": ACCEPT[fmt]})
        plain_s.append(took)
        took, wire = scrape(url, {"Accept": ACCEPT[fmt], "Accept-Encoding": "gzip"})
        gzip_s.append(took)
    tally = tally_protobuf(body, ports) if fmt == "protobuf" else tally_text(body, ports)
    if format_of(body) != fmt or format_of(gzip.decompress(wire)) != fmt:
        tally.problems.append(f"asked for {fmt}, got {format_of(body)}")
    return Measured(histograms, fmt, tally, len(body), len(wire), plain_s, gzip_s)


def run_mode(histograms: str, ports: list[int], args: argparse.Namespace) -> list[Measured]:
    """One exporter with this `histograms` setting: the sessions, then its formats."""
    port_labels = {str(port) for port in ports}
    with exporter(exporter_config(histograms, ports)) as (_proc, url):
        took = make_sessions(workloads(ports, args.sessions), args.parallel)
        print(f"{histograms}: {len(ports) * len(ADDRESSES) * args.sessions:,} sessions "
              f"in {took:.1f} s", file=sys.stderr)
        results = [measure(url, histograms, fmt, args.scrapes, port_labels)
                   for fmt in PLAN[histograms]]
        failures = insert_failures(url)
        for result in results:
            result.made = len(ports) * LABEL_SETS_PER_PORT * args.sessions
            result.insert_failures = failures
            if result.tally.folded != result.made:
                result.tally.problems.append(f"{histograms}, {result.format}: "
                                             f"{result.tally.folded:,} of {result.made:,} folded")
        for result in results if args.prometheus else ():
            result.stored, problem = stored_by_prometheus(url, result.format)
            result.tally.problems += [problem] if problem else []
    return results


def _mean(values: list[int]) -> str:
    return f"{statistics.mean(values):.1f}" if values else ""


def report(results: list[Measured], args: argparse.Namespace) -> str:
    label_sets = results[0].tally.label_sets
    out = [f"Machine: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs. "
           f"{label_sets:,} label sets ({args.ports} ports x inbound/outbound x IPv4/IPv6), "
           f"{args.sessions} sessions each; scrape times: median (range) of {args.scrapes}.",
           "", "| histograms | format | series (tcplife_session_*) | stored by Prometheus "
           "| body | gzip | scrape time | scrape time, gzip | sessions folded / made |",
           "|---" * 9 + "|"]
    for r in results:
        stored = f"{r.stored:,}" if r.stored is not None else "-"
        out.append(f"| {r.histograms} | {r.format} | {r.tally.series:,} | {stored} | "
                   f"{r.body_bytes / 1e3:,.0f} kB | {r.gzip_bytes / 1e3:,.0f} kB | "
                   f"{spread(r.plain_s, 1e3, 0, ' ms')} | {spread(r.gzip_s, 1e3, 0, ' ms')} | "
                   f"{r.tally.folded:,} / {r.made:,} |")
    for r in results:
        if r.insert_failures and r.format == PLAN[r.histograms][0]:
            out.append(f"\n{r.histograms}: the exporter counted {r.insert_failures:,} sessions in "
                       'tcplife_exporter_map_insert_failures_total{map="series"}.')
        if r.tally.populated:
            out.append(f"\n{r.histograms}: a native histogram has {_mean(r.tally.populated)} "
                       f"non-empty buckets on average, in {_mean(r.tally.spans)} spans.")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=250, help="4 label sets each")
    parser.add_argument("--sessions", type=int, default=12, help="per label set")
    parser.add_argument("--scrapes", type=int, default=7, help="timed, per format")
    parser.add_argument("--parallel", type=int, default=64,
                        help="ports and addresses whose sessions run at once")
    parser.add_argument("--no-prometheus", dest="prometheus", action="store_false",
                        help="skip the real Prometheus's count of stored series")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scrape_size: run as root (the exporter loads BPF programs)")
    ports = sorted(service_port() for _ in range(args.ports))
    results = [r for histograms in PLAN for r in run_mode(histograms, ports, args)]
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(report(results, args))
    problems = [p for r in results for p in r.tally.problems]
    for problem in problems[:20]:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
