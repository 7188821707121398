"""Cost per session: the CPU each tool adds per TCP session, at fixed rates.

Saturated throughput cannot separate tools that differ by a few per cent (single
rounds vary by more). At a fixed rate below saturation the churn does the same
work with or without a tool, so the machine's extra busy CPU is the tool's cost:
all CPUs, user and kernel, softirq included (elapsed time minus the kernel's idle
clock: see busy_clock()), per session, minus that of the churn alone run right
before or after it (in random order), so that the machine's drift cancels.
Every contender runs at every rate in each round, in a new random order.

The paced churn is one worker pinned to the first CPU, in a network namespace
of its own that keeps no TIME_WAIT sockets: a session's work then stays on one
CPU, and no run pays for the TIME_WAIT timers of an earlier one (a saturated run
leaves over 100,000 behind, expiring a minute later). The saturated rounds run
after the paced ones, in the same namespace with --workers unpinned workers, and
give the throughput ratio against the churn alone, also in adjacent pairs.

Contenders: the do-nothing programs where the tools attach (a sock_ops program
asking for the same callbacks as tcplife-exporter: its floor; a tracepoint
program: bpftrace's); bpftrace keeping a lifespan histogram only
(bench/lifespan.bt, the cheapest useful peer); tcplife-exporter with the default
config, not scraped, and with native histograms (`histograms: native`); tcplife
printing every session to a file in RAM.

Run as root from the repository: `make bench-cost` (or `.venv/bin/python bench/cost.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from run import (
    BENCH,
    NOOP_OBJECT,
    STATS_SYSCTL,
    TCPLIFE,
    build_churn,
    churn,
    exporter,
    program_stats,
    programs_of,
    tool_process,
    wait_until,
)

CPUS = os.sysconf("SC_NPROCESSORS_ONLN")
NETNS = f"tcplife-cost-{os.getpid()}"
# Quiet: under 5 % of one CPU busy for two windows of 0.1 s in a row (an idle
# machine here: about 1 %, this script's own readings included).
QUIET_WINDOW_S = 0.1
QUIET_BUSY_S = 0.005
QUIET_WAIT_MAX_S = 10


def busy_clock() -> float:
    """CPU seconds busy on all CPUs since boot: user and kernel, irq and softirq.

    Elapsed time minus the NO_HZ idle clock of each CPU, in nanoseconds from
    /proc/timer_list. The busy fields of /proc/stat are sampled at each tick on
    this kernel (CONFIG_TICK_CPU_ACCOUNTING: a paced churn that used 1.87 CPU s
    showed as 0.07), and its idle field counts in 1/100 s: 1,000 ns per session
    over a second at 10,000 sessions/s. A CPU idle right now has its current idle
    period added (the file shows it as entered after the last exit).
    """
    text = Path("/proc/timer_list").read_text()
    now = int(re.search(r"^now at (\d+) nsecs", text, re.M).group(1))
    idle = 0
    for cpu in text.split("\ncpu: ")[1:]:
        field = {name: int(value) for name, value in
                 re.findall(r"^\s+\.(idle_\w+|iowait_sleeptime)\s*: (\d+) nsecs", cpu, re.M)}
        idle += field["idle_sleeptime"] + field["iowait_sleeptime"]
        if field["idle_entrytime"] > field["idle_exittime"]:
            idle += now - field["idle_entrytime"]
    return (now * CPUS - idle) / 1e9


def until_quiet() -> None:
    """Waits until the machine is next to idle before a measured run: what the
    previous run's tool left behind (at its exit the kernel frees its maps in a
    worker, milliseconds of CPU for a large table; bpftrace compiles its script)
    and what this one's does at start-up are not per-session costs, and 0.1 s
    of them is 10,000 ns per session in a 2 s run at 5,000 sessions/s."""
    deadline = time.monotonic() + QUIET_WAIT_MAX_S
    quiet, before = 0, busy_clock()
    while quiet < 2:
        if time.monotonic() > deadline:
            print("cost: the machine did not go quiet before a run; measured anyway",
                  file=sys.stderr)
            return
        time.sleep(QUIET_WINDOW_S)
        now = busy_clock()
        quiet = quiet + 1 if now - before < QUIET_BUSY_S else 0
        before = now


@dataclass
class Run:
    sessions: int
    failures: int
    seconds: float
    busy_s: float

    @property
    def achieved(self) -> float:
        return self.sessions / self.seconds


@dataclass
class Pair:
    """A contender's run and the churn alone's, one right after the other."""

    contender: str
    rate: float  # asked; 0: as fast as possible
    tool: Run
    alone: Run

    @property
    def added_ns(self) -> float:
        """CPU per session over the churn's own, in nanoseconds."""
        return (self.tool.busy_s / self.tool.sessions
                - self.alone.busy_s / self.alone.sessions) * 1e9

    @property
    def throughput(self) -> float:
        return self.tool.achieved / self.alone.achieved


# Each contender yields its process (None: the churn alone).
@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield None


@contextlib.contextmanager
def noop(*flags: str) -> Iterator[subprocess.Popen]:
    argv = [sys.executable, str(BENCH / "attach_noop.py"), str(NOOP_OBJECT), *flags]
    with tool_process(argv) as tool:
        wait_until(lambda: "attached" in tool.stderr_text(), tool, "the do-nothing program")
        yield tool


@contextlib.contextmanager
def bpftrace() -> Iterator[subprocess.Popen]:
    """Attached once it says so on stdout; its histogram, printed at exit, is not read.
    It finds tracepoints in tracefs, which a fresh boot may not have mounted: it gets
    a mount of its own, in a mount namespace of its own."""
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tracefs nodev /sys/kernel/tracing && exec bpftrace "$0"',
            str(BENCH / "lifespan.bt")]
    with tempfile.TemporaryFile("w+") as out, tool_process(argv, stdout=out) as tool:
        wait_until(lambda: "Attaching" in (out.seek(0), out.read())[1], tool, "bpftrace")
        yield tool  # unshare and sh exec: bpftrace itself


@contextlib.contextmanager
def tcplife_exporter(checkout: Path | None = None, config: str = "") -> Iterator[subprocess.Popen]:
    with exporter(config, checkout) as (tool, _url):  # "": the default config
        yield tool


@contextlib.contextmanager
def tcplife() -> Iterator[subprocess.Popen]:
    with tempfile.TemporaryFile("w+b", dir="/dev/shm") as sink, \
            tool_process([*TCPLIFE], stdout=sink) as tool:
        wait_until(lambda: "Tracing TCP sessions" in tool.stderr_text(), tool, "tcplife")
        yield tool


FLOOR = "do-nothing sock_ops (floor)"
TRACEPOINT = "do-nothing tracepoint"
BPFTRACE = "bpftrace lifespan hist"
EXPORTER = "tcplife-exporter"
NATIVE = "tcplife-exporter, native"  # histograms: native (default schema and window)
TCPLIFE_ROW = "tcplife > file in RAM"
BEFORE = "tcplife-exporter before"  # --compare: another checkout's, side by side
CONTENDERS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    FLOOR: noop,
    TRACEPOINT: lambda: noop("--tracepoint"),
    BPFTRACE: bpftrace,
    EXPORTER: tcplife_exporter,
    NATIVE: lambda: tcplife_exporter(config="histograms: native\n"),
    TCPLIFE_ROW: tcplife,
}


@contextlib.contextmanager
def quiet_netns() -> Iterator[list[str]]:
    """A network namespace whose loopback keeps no TIME_WAIT sockets (each is
    closed at once, as when the table is full); yields the command prefix."""
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        wrapper = ["ip", "netns", "exec", NETNS]
        subprocess.run([*wrapper, "sh", "-c", "ip link set lo up && "
                        "sysctl -q net.ipv4.tcp_max_tw_buckets=0"], check=True)
        yield wrapper
    finally:
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)


def churn_at(rate: float, args: argparse.Namespace, wrapper: list[str]) -> dict:
    """The churn at a fixed rate (one pinned worker), or saturated (rate 0)."""
    if rate:
        return churn(args.seconds, 1, ["-r", str(rate), "-P"], wrapper)
    return churn(args.seconds, args.workers, [], wrapper)


def shuffled(rates: list[float]) -> list[tuple[str, float]]:
    """Every contender at every rate, in a new random order."""
    order = [(c, rate) for c in CONTENDERS for rate in rates]
    random.shuffle(order)
    return order


def one_run(contender: Callable[[], contextlib.AbstractContextManager], rate: float,
            args: argparse.Namespace, wrapper: list[str]) -> Run:
    with contender():
        until_quiet()
        before = busy_clock()
        result = churn_at(rate, args, wrapper)
        busy = busy_clock() - before
    return Run(result["sessions"], result["failures"], result["seconds"], busy)


@dataclass
class ProgramTime:
    """A contender's BPF programs over one paced run with kernel.bpf_stats_enabled=1."""

    contender: str
    rate: float
    sessions: int
    run_time_ns: int
    runs: int


def program_time(contender: str, rate: float, args: argparse.Namespace,
                 wrapper: list[str]) -> ProgramTime:
    with CONTENDERS[contender]() as tool:
        until_quiet()
        ids = programs_of(tool.pid)
        before = program_stats(ids)
        result = churn_at(rate, args, wrapper)
        after = program_stats(ids)
    return ProgramTime(contender, rate, result["sessions"],
                       sum(after[name][0] - before[name][0] for name in after),
                       sum(after[name][1] - before[name][1] for name in after))


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    before = STATS_SYSCTL.read_text()
    STATS_SYSCTL.write_text("1")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(before)


def pair(contender: str, rate: float, args: argparse.Namespace, wrapper: list[str]) -> Pair:
    first_alone = random.random() < 0.5
    runs = {}
    for alone in (first_alone, not first_alone):
        runs[alone] = one_run(nothing if alone else CONTENDERS[contender], rate, args, wrapper)
    return Pair(contender, rate, runs[False], runs[True])


def spread(values: list[float], digits: int = 0) -> str:
    """Median and the middle half of the values."""
    low, mid, high = statistics.quantiles(values, n=4, method="inclusive") \
        if len(values) > 1 else values * 3
    return f"{mid:,.{digits}f} ({low:,.{digits}f} to {high:,.{digits}f})"


def median_of(pairs: list[Pair], contender: str, rate: float, value: str) -> float:
    return statistics.median(getattr(p, value) for p in pairs
                             if p.contender == contender and p.rate == rate)


def targets(pairs: list[Pair], rates: list[float], saturated: bool) -> list[str]:
    """The issue's targets, from the medians of this run."""
    def times(ns: dict[str, float], of: str, what: str, target: str) -> str:
        if ns[of] <= 0:  # a median below the noise: no ratio means anything
            return f"an unknown multiple of {what} (its median is {ns[of]:,.0f} ns: more rounds)"
        return f"{ns[EXPORTER] / ns[of]:.2f}x {what} (target {target})"

    lines = []
    for rate in rates:
        ns = {c: median_of(pairs, c, rate, "added_ns") for c in (EXPORTER, TRACEPOINT, BPFTRACE)}
        lines.append(f"At {rate:,.0f}/s the exporter adds "
                     + times(ns, TRACEPOINT, "the do-nothing tracepoint program", "at most 1.5x")
                     + " and "
                     + times(ns, BPFTRACE, "bpftrace's lifespan histogram", "at most 0.5x")
                     + ".")
    if saturated:
        lines.append(f"Saturated throughput: exporter "
                     f"{median_of(pairs, EXPORTER, 0, 'throughput'):.3f} (target at least "
                     f"0.98), tcplife {median_of(pairs, TCPLIFE_ROW, 0, 'throughput'):.3f} "
                     f"(target at least 0.85) of the churn alone.")
    return lines


def program_table(times: list[ProgramTime], rates: list[float]) -> list[str]:
    out = ["", "Time in the contender's BPF programs per session (kernel.bpf_stats_enabled=1, "
           "which adds two clock reads to every run), ns: median (middle half); runs per "
           "session.", "",
           "| contender | " + " | ".join(f"at {r:,.0f}/s" for r in rates) + " |",
           "|---" * (len(rates) + 1) + "|"]
    for contender in CONTENDERS:
        cells = [contender]
        for rate in rates:
            mine = [t for t in times if t.contender == contender and t.rate == rate]
            cells.append(spread([t.run_time_ns / t.sessions for t in mine]) + "; "
                         f"{statistics.median(t.runs / t.sessions for t in mine):.1f} runs")
        out.append("| " + " | ".join(cells) + " |")
    return out


def report(pairs: list[Pair], times: list[ProgramTime], args: argparse.Namespace) -> str:
    rates = [r for r in args.rates if r]
    saturated = 0 in args.rates
    out = [f"Machine: {platform.node()}, Linux {platform.release()}, {CPUS} CPUs; "
           f"{args.rounds} rounds of {args.seconds:g} s runs, each contender's run next to "
           f"one of the churn alone, in random order. Paced: 1 churn worker pinned to CPU 0 "
           f"in a netns without TIME_WAIT; saturated: {args.workers} workers. 64 B each way, "
           f"IPv4 loopback. Median (middle half).", ""]
    header = ["contender"] + [f"added CPU per session at {r:,.0f}/s, ns" for r in rates]
    if saturated:
        header.append("throughput at saturation vs. churn alone")
    out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for contender in CONTENDERS:
        cells = [contender]
        for rate in rates:
            cells.append(spread([p.added_ns for p in pairs
                                 if p.contender == contender and p.rate == rate]))
        if saturated:
            cells.append(spread([p.throughput for p in pairs
                                 if p.contender == contender and p.rate == 0], 3))
        out.append("| " + " | ".join(cells) + " |")
    alone = []
    for rate in args.rates:
        runs = [p.alone for p in pairs if p.rate == rate]
        alone.append((f"asked {rate:,.0f}/s: " if rate else "saturated: ")
                     + f"{statistics.median(r.achieved for r in runs):,.0f}/s, "
                     f"{statistics.median(r.busy_s / r.sessions for r in runs) * 1e9:,.0f} "
                     "ns busy per session")
    out += ["", "Churn alone, median: " + "; ".join(alone) + "."]
    failures = sum(run.failures for p in pairs for run in (p.tool, p.alone))
    out.append(f"Churn sessions that failed, all runs: {failures:,}.")
    if times:
        out += program_table(times, rates)
    if {EXPORTER, TRACEPOINT, BPFTRACE, TCPLIFE_ROW} <= CONTENDERS.keys():
        out += ["", *targets(pairs, rates, saturated)]
    return "\n".join(out)


def phase(rates: list[float], args: argparse.Namespace, wrapper: list[str]) -> list[Pair]:
    pairs = []
    for number in range(args.rounds):
        done = [pair(c, rate, args, wrapper) for c, rate in shuffled(rates)]
        pairs += done
        print(f"round {number + 1}: " + ", ".join(
            f"{p.contender} at {p.rate:g}: " + (f"{p.added_ns:,.0f} ns" if p.rate
                                               else f"{p.throughput:.3f}")
            for p in done), file=sys.stderr)
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--workers", type=int, default=4, help="of the saturated churn")
    parser.add_argument("--rates", type=float, nargs="+", default=[5000, 10000, 0],
                        help="sessions per second of the paced churn; 0: saturated")
    parser.add_argument("--stats-rounds", type=int, default=3,
                        help="rounds of paced runs with kernel.bpf_stats_enabled=1")
    parser.add_argument("--json", metavar="PATH", help="also write the raw runs here")
    parser.add_argument("--compare", metavar="CHECKOUT", type=Path,
                        help="also run the exporter of another checkout (its BPF object "
                             "built: make bpf), e.g. before a change")
    args = parser.parse_args()
    if args.compare:
        checkout = args.compare.resolve()
        CONTENDERS[BEFORE] = lambda: tcplife_exporter(checkout)
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it loads BPF programs)")
    build_churn()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    paced = [r for r in args.rates if r]
    times = []
    with quiet_netns() as wrapper:
        pairs = phase(paced, args, wrapper)
        if 0 in args.rates:
            pairs += phase([0], args, wrapper)
        with bpf_stats():
            for _ in range(args.stats_rounds):
                times += [program_time(c, rate, args, wrapper) for c, rate in shuffled(paced)]
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": [asdict(p) for p in pairs],
                                               "program_times": [asdict(t) for t in times]},
                                              indent=1))
    print(report(pairs, times, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
