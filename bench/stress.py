"""Stress: does tcplife-exporter fold every session, whatever else happens?

Each trial starts a fresh exporter and runs eight IPv6 loopback churns at once
(1000 sessions each, Python threads, a thread per end, clients closing first:
closes land in softirqs on top of whatever the CPUs run). In half of the
trials another program attaches and detaches over and over: a do-nothing
sock_ops program on the root cgroup (the exporter's own hook) and a
do-nothing program on the inet_sock_set_state tracepoint (where other TCP
tracers sit). In a quarter the exporter reloads a changed config with SIGHUP
halfway through (the count is then the old program's plus the new one's, as
the exporter carries it on). A trial is exact when the exporter folded exactly
the sessions of its eight ports, both ends of each, none is left open and its
self-metrics count no loss (no session table insert failed, no close went unseen).

    make stress                                   # 50 trials, as root
    .venv/bin/python bench/stress.py --trials 10 --json /tmp/stress.json

Prints a line per trial and a summary; exits 1 unless every trial is exact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import (
    BENCH,
    EXPORTER,
    NOOP_OBJECT,
    REPO,
    build_churn,
    samples,
    scrape,
    tool_process,
    wait_until,
)

sys.path.insert(0, str(REPO))
from tests.helpers.traffic import Load, free_port, run_load

KINDS = ("plain", "attach", "reload")
FOLDED = "tcplife_session_duration_seconds_count"
RELOADED = "tcplife_exporter_label_sets_limit"
# The exporter's own count of what it lost (a full session table, closes never seen).
LOSSES = ("tcplife_exporter_map_insert_failures_total",
          "tcplife_exporter_sessions_close_unseen_total")


def kinds_for(trials: int, attach_beside: bool = True) -> list[str]:
    """Half with programs attaching beside, a quarter with a reload, shuffled."""
    attach, reload = (trials // 2 if attach_beside else 0), trials // 4
    kinds = ["attach"] * attach + ["reload"] * reload + ["plain"] * (trials - attach - reload)
    random.shuffle(kinds)
    return kinds


def config_for(ports: list[int]) -> str:
    return (f"ports: {{labelled: [{', '.join(map(str, ports))}], auto: false}}\n"
            "filters: {family: ipv6}\n")


def run_loads(loads: list[Load], halfway: threading.Event) -> None:
    """All loads at once; ``halfway`` is set once the first has done half its sessions."""
    first, rest = loads[0], loads[1:]
    halves = [Load(**{**vars(first), "count": first.count // 2}),
              Load(**{**vars(first), "count": first.count - first.count // 2})]
    threads = [threading.Thread(target=run_load, args=(load,)) for load in rest]

    def first_load() -> None:
        run_load(halves[0])
        halfway.set()
        run_load(halves[1])

    threads.append(threading.Thread(target=first_load))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def trial(kind: str, listeners: int, sessions: int) -> dict:
    ports = [free_port(socket.AF_INET6) for _ in range(listeners)]
    loads = [Load(port=port, count=sessions, server_addr="::1") for port in ports]
    expected = 2 * listeners * sessions
    labels = {str(port) for port in ports}
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "config.yaml"
        config.write_text(config_for(ports))
        listen = free_port()
        url = f"http://127.0.0.1:{listen}/metrics"
        argv = [*EXPORTER, "--config.file", str(config),
                "--web.listen-address", f"127.0.0.1:{listen}"]
        with contextlib.ExitStack() as stack:
            exporter = stack.enter_context(tool_process(argv))
            wait_until(lambda: "listening on" in exporter.stderr_text(), exporter,
                       "tcplife-exporter")
            halfway = threading.Event()
            beside = None
            if kind == "attach":
                beside = stack.enter_context(tool_process(
                    [sys.executable, str(BENCH / "attach_noop.py"), str(NOOP_OBJECT),
                     "--cycle", "0.02"]))
                # Cycling before the churn starts: it starts in seconds under emulation.
                wait_until(lambda: "cycling" in beside.stderr_text(), beside, "attach_noop.py")
            if kind == "reload":
                def reload() -> None:
                    halfway.wait()
                    config.write_text(config_for(ports) + "limits: {max_label_sets: 999}\n")
                    exporter.send_signal(signal.SIGHUP)
                threading.Thread(target=reload, daemon=True).start()
            started = time.monotonic()
            run_loads(loads, halfway)
            seconds = time.monotonic() - started
            cycles = 0
            if beside is not None:
                beside.send_signal(signal.SIGINT)
                beside.wait(timeout=30)
                cycles = int(beside.stderr_text().split("cycles ")[-1])
            deadline = time.monotonic() + 10
            while True:
                found = samples(scrape(url)[1], labels)
                done = found.get(FOLDED, 0) >= expected and (
                    kind != "reload" or found.get(RELOADED) == 999)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            log = exporter.stderr_text()
    folded = int(found.get(FOLDED, 0))
    return {
        "kind": kind, "expected": expected, "folded": folded,
        "open": int(found.get("tcplife_sessions_open", 0)),
        "handshake_failures": int(found.get("tcplife_handshake_failures_total", 0)),
        "losses_counted": int(sum(found.get(name, 0) for name in LOSSES)),
        "reloaded": kind != "reload" or "folded counters go on" in log,
        "attach_cycles": cycles, "seconds": round(seconds, 1),
    }


def exact(result: dict) -> bool:
    return (result["folded"] == result["expected"] and result["open"] == 0
            and result["handshake_failures"] == 0 and result["losses_counted"] == 0
            and result["reloaded"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=1000, help="per listener")
    parser.add_argument("--json", metavar="PATH", help="also write every trial here")
    parser.add_argument("--no-attach", action="store_true",
                        help="no trials with programs attaching beside (their attach and "
                        "detach patch kernel text, which QEMU 7.2's multi-threaded "
                        "emulation gets wrong: Debian's 6.12 oopses)")
    args = parser.parse_args()
    if args.trials < 1 or args.listeners < 1 or args.sessions < 2:
        parser.error("--trials and --listeners must be at least 1, --sessions at least 2")
    build_churn()  # builds the do-nothing programs too
    results = []
    for number, kind in enumerate(kinds_for(args.trials, not args.no_attach), start=1):
        result = trial(kind, args.listeners, args.sessions)
        result["exact"] = exact(result)
        results.append(result)
        lost = result["expected"] - result["folded"]
        extra = f", {result['attach_cycles']} attach cycles" if kind == "attach" else ""
        print(f"trial {number:3}/{args.trials} {kind:6}: {result['folded']:,} of "
              f"{result['expected']:,} folded, {lost:,} lost ({result['losses_counted']} counted),"
              f" {result['open']} open ({result['seconds']} s{extra})"
              f"{'' if result['exact'] else '  NOT EXACT'}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    good = sum(r["exact"] for r in results)
    expected = sum(r["expected"] for r in results)
    folded = sum(r["folded"] for r in results)
    print(f"\ntrials {len(results)}, exact {good}; sessions expected {expected:,}, "
          f"folded {folded:,}, lost {expected - folded:,}")
    for kind in KINDS:
        of_kind = [r for r in results if r["kind"] == kind]
        if of_kind:
            print(f"  {kind}: {sum(r['exact'] for r in of_kind)} of {len(of_kind)} exact")
    return 0 if good == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
