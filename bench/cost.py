"""Cost per session: the CPU each tool adds per TCP session, at fixed rates.

Saturated throughput cannot separate tools that differ by a few per cent (single
rounds vary by more). At a fixed rate below saturation the churn does the same
work with or without a tool, so the machine's extra busy CPU is the tool's cost:
all CPUs, user and kernel, softirq included (elapsed time minus /proc/stat's idle
time: see cpu_clock()), minus the busy CPU of the churn alone in the same round,
divided by the sessions. Every contender
runs at every rate in each round, in a new random order each round.

Contenders: the churn alone; the do-nothing programs where the tools attach (a
sock_ops program asking for the same callbacks as tcplife-exporter: its floor;
a tracepoint program: bpftrace's); bpftrace keeping a lifespan histogram only
(bench/lifespan.bt, the cheapest useful peer); tcplife-exporter with the default
config, not scraped; tcplife printing every session to a file in RAM. The
saturated rounds (rate "max") give the throughput ratio against the churn alone.

Run as root from the repository: `make bench-cost` (or `.venv/bin/python bench/cost.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from run import (
    BENCH,
    NOOP_OBJECT,
    TCPLIFE,
    build_churn,
    churn,
    exporter,
    tool_process,
    wait_until,
)

USER_HZ = os.sysconf("SC_CLK_TCK")
CPUS = os.sysconf("SC_NPROCESSORS_ONLN")
SETTLE_S = 0.5  # after a tool is ready, before measuring: its start-up is not per session


def cpu_clock() -> tuple[float, float]:
    """(CPU seconds elapsed on all CPUs, CPU seconds idle): their difference over an
    interval is the busy time, user and kernel, irq and softirq included.

    Idle (and iowait) in /proc/stat comes from the kernel's own idle clock, exact
    under NO_HZ (an interrupt on an idle CPU ends idle time). The busy fields
    (user, system, softirq...) are sampled at each tick instead
    (CONFIG_TICK_CPU_ACCOUNTING): a paced load whose bursts fall between ticks is
    counted at a fraction of its time, or more than it. Measured here: churn
    alone at 20,000 sessions/s for 3 s, busy fields 0.07 s, elapsed minus idle
    1.87 s; at full speed both 6.04 s.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    elapsed = time.monotonic() * CPUS
    idle, iowait = int(fields[4]), int(fields[5])
    return elapsed, (idle + iowait) / USER_HZ


@dataclass
class Run:
    contender: str
    rate: float  # asked; 0: as fast as possible
    sessions: int
    failures: int
    seconds: float
    busy_s: float

    @property
    def achieved(self) -> float:
        return self.sessions / self.seconds


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def noop(*flags: str) -> Iterator[None]:
    argv = [sys.executable, str(BENCH / "attach_noop.py"), str(NOOP_OBJECT), *flags]
    with tool_process(argv) as tool:
        wait_until(lambda: "attached" in tool.stderr_text(), tool, "the do-nothing program")
        yield


@contextlib.contextmanager
def bpftrace() -> Iterator[None]:
    """Attached once it says so on stdout; its histogram, printed at exit, is not read."""
    with tempfile.TemporaryFile("w+") as out, \
            tool_process(["bpftrace", str(BENCH / "lifespan.bt")], stdout=out) as tool:
        wait_until(lambda: "Attaching" in (out.seek(0), out.read())[1], tool, "bpftrace")
        yield


@contextlib.contextmanager
def tcplife_exporter(checkout: Path | None = None) -> Iterator[None]:
    with exporter("", checkout):  # the default config
        yield


@contextlib.contextmanager
def tcplife() -> Iterator[None]:
    with tempfile.TemporaryFile("w+b", dir="/dev/shm") as sink, \
            tool_process([*TCPLIFE], stdout=sink) as tool:
        wait_until(lambda: "Tracing TCP sessions" in tool.stderr_text(), tool, "tcplife")
        yield


CONTENDERS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "churn alone": nothing,
    "do-nothing sock_ops (floor)": noop,
    "do-nothing tracepoint": lambda: noop("--tracepoint"),
    "bpftrace lifespan hist": bpftrace,
    "tcplife-exporter": tcplife_exporter,
    "tcplife > file in RAM": tcplife,
}
BASE = "churn alone"
BEFORE = "tcplife-exporter before"  # --compare: another checkout's, side by side


def measure(contender: str, rate: float, args: argparse.Namespace) -> Run:
    with CONTENDERS[contender]():
        time.sleep(SETTLE_S)
        elapsed, idle = cpu_clock()
        result = churn(args.seconds, args.workers, ["-r", str(rate)] if rate else [])
        elapsed_after, idle_after = cpu_clock()
    busy = (elapsed_after - elapsed) - (idle_after - idle)
    return Run(contender, rate, result["sessions"], result["failures"], result["seconds"], busy)


def added_ns(run: Run, base: Run) -> float:
    """CPU per session over the churn's own, in nanoseconds."""
    return (run.busy_s / run.sessions - base.busy_s / base.sessions) * 1e9


def spread(values: list[float], digits: int = 0) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:,.{digits}f} ({low:,.{digits}f} to {high:,.{digits}f})"


def report(rounds: list[dict[tuple[str, float], Run]], args: argparse.Namespace) -> str:
    rates = [r for r in args.rates if r]
    out = [f"Machine: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs; "
           f"{len(rounds)} rounds of {args.seconds:g} s per contender and rate, in random "
           f"order; {args.workers} churn workers, 64 B each way, IPv4 loopback. Busy CPU: "
           f"elapsed minus /proc/stat idle, all CPUs (1/{USER_HZ} s per reading).", ""]
    header = ["contender"] + [f"added CPU per session at {r:,.0f}/s, ns: median (range)"
                              for r in rates]
    if 0 in args.rates:
        header.append("throughput at saturation vs. churn alone: median (range)")
    out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for contender in CONTENDERS:
        if contender == BASE:
            continue
        cells = [contender]
        for rate in rates:
            cells.append(spread([added_ns(r[(contender, rate)], r[(BASE, rate)])
                                 for r in rounds]))
        if 0 in args.rates:
            cells.append(spread([r[(contender, 0)].achieved / r[(BASE, 0)].achieved
                                 for r in rounds], 3))
        out.append("| " + " | ".join(cells) + " |")
    base_cells = [f"{statistics.median(r[(BASE, rate)].achieved for r in rounds):,.0f}/s "
                  f"({statistics.median(r[(BASE, rate)].busy_s for r in rounds) / args.seconds:.2f}"
                  " CPUs busy)" for rate in args.rates]
    out += ["", "Churn alone, median: " + "; ".join(
        f"asked {rate:,.0f}/s: {cell}" if rate else f"saturated: {cell}"
        for rate, cell in zip(args.rates, base_cells)) + "."]
    failures = sum(run.failures for r in rounds for run in r.values())
    out.append(f"Churn sessions that failed, all runs: {failures:,}.")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="+", default=[5000, 20000, 0],
                        help="sessions per second over all workers; 0: saturated")
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
    rounds = []
    for number in range(args.rounds):
        order = [(c, rate) for c in CONTENDERS for rate in args.rates]
        random.shuffle(order)
        rounds.append({key: measure(*key, args) for key in order})
        print(f"round {number + 1}: " + ", ".join(
            f"{c} at {rate:g}: {added_ns(run, rounds[-1][(BASE, rate)]):,.0f} ns"
            for (c, rate), run in rounds[-1].items() if c != BASE and rate), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [[asdict(run) for run in r.values()] for r in rounds], indent=1))
    print(report(rounds, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
