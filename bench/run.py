"""Benchmark: what tcplife-exporter and tcplife cost under connection churn, and
whether they lose sessions.

Runs, in rounds and in rotating order: the churn alone; the churn with a
do-nothing sock_ops program that asks for the same callbacks (the floor); the churn with
tcplife-exporter attached and scraped every second; the churn with tcplife
printing every session; with --compare, another checkout's exporter too (before
and after a change, side by side in the same rounds). Then tcplife at a fixed
10,500 sessions/s, and scrape time and size at about 1k and 10k series. Prints a
Markdown table.

Run as root from the repository: `make bench` (or `.venv/bin/python bench/run.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CHURN = BENCH / "churn"
NOOP_OBJECT = BENCH / "noop.bpf.o"
EXPORTER = [sys.executable, "-m", "tcplife_exporter.exporter_cli"]
TCPLIFE = [sys.executable, "-m", "tcplife_exporter.tcplife_cli"]
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One churn run, with or without a tool."""

    tool: str
    sessions: int = 0
    failures: int = 0
    rate: float = 0.0
    cpu_s: float = 0.0  # the tool's user + system CPU during the churn
    peak_rss: int = 0  # bytes
    bpf_ns: dict[str, tuple[int, int]] = field(default_factory=dict)  # program: (ns, runs)
    traced: int = 0  # sessions the tool reported (both ends count)
    lost: int = 0  # sessions the tool says it lost
    scrape_s: list[float] = field(default_factory=list)
    scrape_series: int = 0
    loss_reasons: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # churn failures by call

    @property
    def expected(self) -> int:
        return expected_traced(self.sessions, self.failures, self.failed)


def expected_traced(sessions: int, failures: int, failed: dict[str, int]) -> int:
    """Both ends of every session are traced on loopback; a failed socket() opens
    nothing, a refused connect() one outbound handshake failure."""
    opened_both = sessions + failures - failed.get("socket", 0) - failed.get("connect", 0)
    return 2 * opened_both + failed.get("connect", 0)


def exporter_tally(found: dict[str, float]) -> tuple[int, int]:
    """(sessions traced, sessions lost) in a scrape of the exporter. The loss
    counters are for the whole host: with other traffic they count it too."""
    traced = int(found.get("tcplife_session_duration_seconds_count", 0)
                 + found.get("tcplife_handshake_failures_total", 0))
    lost = int(sum(found.get(name, 0) for name in (
        "tcplife_exporter_sessions_birth_unseen_total",
        "tcplife_exporter_sessions_close_unseen_total",
        "tcplife_exporter_map_insert_failures_total",
        "tcplife_sessions_open")))  # still open after the churn: a close not seen
    return traced, lost


def churn(seconds: float, workers: int, extra: list[str] = (), wrapper: list[str] = ()) -> dict:
    """Runs bench/churn (under ``wrapper``, e.g. ip netns exec NAME), its JSON line."""
    done = subprocess.run([*wrapper, str(CHURN), "-w", str(workers), "-d", str(seconds), *extra],
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 3):  # 3: some sessions failed; counted and reported
        raise SystemExit(f"churn failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


def programs_of(pid: int) -> set[int]:
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            ids.update(int(m) for m in re.findall(r"^prog_id:\s+(\d+)$", info.read_text(), re.M))
    return ids


def program_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    shown = json.loads(subprocess.run(["bpftool", "prog", "show", "--json"], check=True,
                                      capture_output=True, text=True).stdout)
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in shown if p["id"] in ids}


def scrape(url: str, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Seconds and body of one GET; ``headers`` choose the format (Accept) or ask for
    gzip (Accept-Encoding: the body then stays compressed, as it travelled)."""
    request = urllib.request.Request(url, headers=headers or {})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return time.perf_counter() - start, body


def samples(body: bytes, ports: set[str] | None = None) -> dict[str, float]:
    """Sample name -> sum over its series; with ``ports``, only the series of those
    port labels (and those without one)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if ports is None or sample.labels.get("port", next(iter(ports))) in ports:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@contextlib.contextmanager
def tool_process(argv: list[str], checkout: Path | None = None, stdout=subprocess.DEVNULL):
    """A tool whose stderr goes to a file (read with .stderr_text()); always stopped.
    Run from ``checkout`` if given: its package, not this repository's."""
    env = dict(os.environ, PYTHONPATH=str(checkout)) if checkout else None
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(argv, cwd=checkout or REPO, stdout=stdout, stderr=errors,
                                text=True, env=env)
        proc.stderr_text = lambda: (errors.seek(0), errors.read())[1]
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start: {proc.stderr_text().strip()}")
        time.sleep(0.1)


def run_baseline(args) -> Run:
    result = churn(args.seconds, args.workers)
    return Run("baseline", result["sessions"], result["failures"], result["rate"],
               failed=result["failed"])


def free_port() -> int:
    """A port on [::1] that nothing listens on now."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        scrape(url)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def exporter(config: str, checkout: Path | None = None):
    """The exporter of this repository, or of another ``checkout`` (its BPF object
    built) to compare with: its package comes first on the module path."""
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "config.yaml"
        path.write_text(config)
        port = free_port()
        url = f"http://[::1]:{port}/metrics"
        argv = [*EXPORTER, "--config.file", str(path),
                "--web.listen-address", f"[::1]:{port}", "--log.level", "warn"]
        with tool_process(argv, checkout) as proc:
            wait_until(lambda: _answers(url), proc, "tcplife-exporter")
            yield proc, url


BEFORE = "exporter before"  # --compare: another checkout's exporter, side by side

# Scrapes travel over IPv6, the churn over IPv4: the filter keeps them apart.
EXPORTER_CONFIG = "filters: {family: ipv4}\n"
CHURN_PORTS_PER_WORKER, CHURN_BASE_PORT = 8, 20000  # churn's defaults (-p, -b)


def churn_ports(workers: int) -> list[str]:
    """The server ports of a churn with default ports: listed in the exporter's
    config and counted by their label, other IPv4 traffic on the host is not."""
    return [str(CHURN_BASE_PORT + i) for i in range(workers * CHURN_PORTS_PER_WORKER)]


@contextlib.contextmanager
def scraping(url: str, every_s: float, times: list[float]):
    """Scrapes in a thread while the block runs, their durations into ``times``."""
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(every_s):
            times.append(scrape(url)[0])

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_exporter(args, checkout: Path | None = None) -> Run:
    ports = churn_ports(args.workers)
    config = EXPORTER_CONFIG + f"ports: {{labelled: [{', '.join(ports)}]}}\n"
    with exporter(config, checkout) as (proc, url):
        run = Run("exporter" if checkout is None else BEFORE)
        cpu_before = cpu_seconds(proc.pid)
        with scraping(url, 1.0, run.scrape_s):
            result = churn(args.seconds, args.workers)
        run.cpu_s = cpu_seconds(proc.pid) - cpu_before
        time.sleep(0.5)  # the last closes
        _, body = scrape(url)
        run.peak_rss = peak_rss(proc.pid)
        found = samples(body, set(ports))
        run.sessions, run.failures, run.rate = (result["sessions"], result["failures"],
                                                result["rate"])
        run.failed = result["failed"]
        run.scrape_series = sum(1 for line in body.splitlines()
                                if line and not line.startswith(b"#"))
        run.traced, run.lost = exporter_tally(found)
        run.bpf_ns = program_stats(programs_of(proc.pid))
    return run


def run_tcplife(args, rate: float = 0) -> Run:
    # Printed to a file in RAM (tmpfs): as cheap as /dev/null, and the lines can be counted.
    with tempfile.NamedTemporaryFile("w+b", dir="/dev/shm", prefix="tcplife-bench-") as sink:
        with tool_process([*TCPLIFE, "-4"], stdout=sink) as tool:
            wait_until(lambda: "Tracing TCP sessions" in tool.stderr_text(), tool, "tcplife")
            run = Run("tcplife" if not rate else f"tcplife at {rate:.0f}/s")
            cpu_before = cpu_seconds(tool.pid)
            result = churn(args.seconds, args.workers, ["-r", str(rate)] if rate else [])
            time.sleep(0.3)
            run.cpu_s = cpu_seconds(tool.pid) - cpu_before
            run.peak_rss = peak_rss(tool.pid)
            run.bpf_ns = program_stats(programs_of(tool.pid))
            tool.send_signal(signal.SIGINT)
            tool.wait(timeout=60)
            errors = tool.stderr_text()
        run.sessions, run.failures, run.rate = (result["sessions"], result["failures"],
                                                result["rate"])
        run.failed = result["failed"]
        run.lost = sum(int(n) for n in re.findall(r"tcplife: (\d+) sessions", errors))
        run.loss_reasons = re.findall(r"tcplife: \d+ sessions (.*)", errors)
        sink.seek(0)
        run.traced = sum(chunk.count(b"\n") for chunk in iter(lambda: sink.read(1 << 20), b""))
        run.traced -= 1  # the header
    return run


def run_floor(args) -> Run:
    """The churn with a do-nothing program on the same callbacks: the cost of being there."""
    with tool_process([sys.executable, str(BENCH / "attach_noop.py"), str(NOOP_OBJECT)]) as tool:
        wait_until(lambda: "attached" in tool.stderr_text(), tool, "the do-nothing programs")
        result = churn(args.seconds, args.workers)
    return Run("floor", result["sessions"], result["failures"], result["rate"],
               failed=result["failed"])


def scrape_cost(args, ports_per_worker: int) -> dict:
    """Scrape time and body size with label sets made from many service ports, idle
    and while the churn saturates the machine."""
    config = EXPORTER_CONFIG + "ports: {auto: true, auto_limit: 1000}\n"
    ports = ["-p", str(ports_per_worker), "-b", "21000"]
    with exporter(config) as (_proc, url):
        churn(2, 2, ports)  # creates the label sets
        time.sleep(0.5)
        idle, body = [], b""
        for _ in range(args.scrapes):
            took, body = scrape(url)
            idle.append(took)
        busy: list[float] = []
        with scraping(url, 0.2, busy):
            churn(max(args.scrapes * 0.2, 2), 2, ports)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {"series": series, "bytes": len(body), "idle_s": idle, "busy_s": busy}


def build_churn() -> None:
    source = BENCH / "churn.c"
    if not CHURN.exists() or CHURN.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-pthread", str(source), "-o",
                        str(CHURN)], check=True)
    source = BENCH / "noop.bpf.c"
    if not NOOP_OBJECT.exists() or NOOP_OBJECT.stat().st_mtime < source.stat().st_mtime:
        multiarch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True,
                                   check=True).stdout.strip()
        subprocess.run(["clang", "-O2", "-Wall", "-Werror", "-target", "bpf",
                        f"-I/usr/include/{multiarch}", "-c", str(source), "-o",
                        str(NOOP_OBJECT)], check=True)


def per_run_ns(run: Run) -> float:
    """Nanoseconds per run of the program (kernel.bpf_stats_enabled)."""
    ns, runs = run.bpf_ns.get("tcp_sessions", (0, 0))
    return ns / runs if runs else 0.0


def spread(values: list[float], scale: float = 1, digits: int = 3, unit: str = "") -> str:
    if not values:
        return "n/a"
    low, mid, high = (f"{v * scale:.{digits}f}{unit}"
                      for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} ({low} to {high})"


def bpf_cpu_per_million(run: Run) -> float:
    """Kernel CPU seconds in the program per million churn sessions."""
    total_ns = sum(ns for ns, _runs in run.bpf_ns.values())
    return total_ns / 1e9 / max(run.sessions, 1) * 1e6


def report(rounds: list[dict[str, Run]], costed: dict[str, Run], paced: Run,
           scrapes: list[dict], args) -> str:
    out = [f"Machine: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs; "
           f"{len(rounds)} rounds of {args.seconds:g} s, {args.workers} churn workers, "
           "64 B each way, IPv4 loopback.", ""]
    base = [r["baseline"].rate for r in rounds]
    out.append(f"Baseline churn: median {statistics.median(base):,.0f} sessions/s "
               f"(range {min(base):,.0f} to {max(base):,.0f}); "
               "each session is traced at both ends.")
    floor = [r["floor"].rate / r["baseline"].rate for r in rounds]
    out.append(f"A do-nothing sock_ops program asking for the same callbacks (the floor of "
               f"this design): {spread(floor)} of baseline.")
    titles = {"exporter": "exporter (scraped every 1 s)", "tcplife": "tcplife > file in RAM",
              BEFORE: f"exporter of {args.compare} (scraped every 1 s)"}
    names = [name for name in titles if name in rounds[0]]
    out += ["", "| | " + " | ".join(titles[n] for n in names) + " |",
            "|---" * (len(names) + 1) + "|"]
    rows = {name: [r[name] for r in rounds] for name in names}

    def row(label: str, fn) -> None:
        out.append(f"| {label} | " + " | ".join(fn(rows[n]) for n in names) + " |")

    row("throughput vs. baseline, median (range)",
        lambda runs: spread([run.rate / r["baseline"].rate for run, r in zip(runs, rounds)]))
    row("user-space CPU s per 1M sessions (the tool's process)", lambda runs: spread(
        [run.cpu_s / max(run.sessions, 1) * 1e6 for run in runs], digits=2))
    row("peak RSS (MB)", lambda runs: f"{max(r.peak_rss for r in runs) / 1e6:.1f}")
    out.append("| BPF ns per run of the program (*) | "
               + " | ".join(f"{per_run_ns(costed[n]):.0f}" for n in rows) + " |")
    out.append("| kernel CPU s in the BPF program per 1M sessions (*) | "
               + " | ".join(f"{bpf_cpu_per_million(costed[n]):.2f}" for n in rows) + " |")
    out.append("| throughput with bpf_stats on, vs. the median baseline (*) | "
               + " | ".join(f"{costed[n].rate / statistics.median(base):.3f}" for n in rows)
               + " |")
    row("sessions traced / expected (all rounds)", lambda runs: (
        f"{sum(r.traced for r in runs):,} / {sum(r.expected for r in runs):,}"))
    row("sessions lost (reported by the tool)", lambda runs: f"{sum(r.lost for r in runs):,}")
    row("churn sessions that failed", lambda runs: f"{sum(r.failures for r in runs):,}")
    series = max((r.scrape_series for r in rows["exporter"]), default=0)
    row(f"scrape time during churn ({series:,} series), median (range)", lambda runs: spread(
        [t for r in runs for t in r.scrape_s], 1e3, 1, " ms") if runs[0].scrape_s else "")
    out += ["", f"tcplife at a fixed {paced.rate:,.0f} sessions/s for {args.seconds:g} s: "
            f"{paced.traced:,} lines for {paced.expected:,} traced sessions, "
            f"{paced.lost} reported lost"
            + (f" ({'; '.join(paced.loss_reasons)})." if paced.loss_reasons else "."), "",
            "| series in a scrape | body | scrape time idle, median (range) "
            "| during a 2-worker churn |", "|---|---|---|---|"]
    for s in scrapes:
        out.append(f"| {s['series']:,} | {s['bytes'] / 1e3:,.0f} kB | "
                   f"{spread(s['idle_s'], 1e3, 1, ' ms')} | {spread(s['busy_s'], 1e3, 1, ' ms')} |")
    out += ["", "(*) from one more run of each tool with kernel.bpf_stats_enabled=1 (run time / "
            "run count); the other rows are measured with it off, as it adds two clock reads "
            "to every program run."]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="also write the raw runs here")
    parser.add_argument("--compare", metavar="CHECKOUT", type=Path,
                        help="also run the exporter of another checkout (its BPF object "
                             "built: make bpf) in the same rounds, e.g. the last release")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it loads BPF programs)")
    build_churn()
    # SIGTERM ends the bench like Ctrl-C: tools stopped, sysctl restored.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    stats_before = STATS_SYSCTL.read_text()
    # Throughput without kernel.bpf_stats_enabled: its two clock reads per program
    # run are a cost of measuring, not of the tools. BPF run time: separate runs.
    STATS_SYSCTL.write_text("0")
    try:
        runners = {"baseline": run_baseline, "floor": run_floor, "exporter": run_exporter,
                   "tcplife": run_tcplife}
        if args.compare:
            runners[BEFORE] = lambda args: run_exporter(args, args.compare.resolve())
        rounds = []
        for number in range(args.rounds):
            shift = number % len(runners)
            order = list(runners)[shift:] + list(runners)[:shift]
            rounds.append({name: runners[name](args) for name in order})
            print(f"round {number + 1}: " + ", ".join(
                f"{name} {run.rate:,.0f}/s" for name, run in rounds[-1].items()),
                file=sys.stderr)
        paced = run_tcplife(args, rate=10_500)
        scrapes = [scrape_cost(args, ports) for ports in (4, 41)]
        STATS_SYSCTL.write_text("1")
        costed = {"exporter": run_exporter(args), "tcplife": run_tcplife(args)}
        if args.compare:
            costed[BEFORE] = runners[BEFORE](args)
    finally:
        STATS_SYSCTL.write_text(stats_before)
    if args.json:  # first: the raw runs survive a problem in the report
        raw = {"rounds": [{k: v.__dict__ for k, v in r.items()} for r in rounds],
               "costed": {k: v.__dict__ for k, v in costed.items()},
               "paced": paced.__dict__, "scrapes": scrapes}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    print(report(rounds, costed, paced, scrapes, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
