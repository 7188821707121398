"""The ``tcplife`` command: one line per closed TCP session, as bcc's tcplife."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence

from . import cgroup
from .errors import TcplifeError
from .formats import Formatter, OutputStyle
from .options import SessionFilter
from .records import ClosedSession
from .tracer import SessionTracer, TracerOptions

EXAMPLES = """\
examples:
    tcplife             # trace all TCP sessions
    tcplife -T          # include time column (HH:MM:SS)
    tcplife -w          # wider columns (fit IPv6)
    tcplife -stT        # csv output, with times & timestamps
    tcplife --json      # one JSON object per session, exact bytes and ns
    tcplife -p 181      # only trace PID 181
    tcplife -L 80       # only trace local port 80
    tcplife -L 80,81    # only trace local ports 80 and 81
    tcplife -D 80       # only trace remote port 80
    tcplife -4          # only trace IPv4 sessions
    tcplife --cgroup    # add each socket's cgroup (service, container)
    tcplife --cgroup-filter /system.slice/nginx.service   # only that cgroup's sockets
"""


def port_list(text: str) -> frozenset[int]:
    ports = set()
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or not 1 <= int(item) <= 65535:
            raise argparse.ArgumentTypeError(
                f"invalid port {item!r}: ports are numbers from 1 to 65535, comma-separated"
            )
        ports.add(int(item))
    return frozenset(ports)


def pid_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 4194304:
        raise argparse.ArgumentTypeError(
            f"invalid PID {text!r}: a PID is a number from 1 to 4194304"
        )
    return int(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tcplife",
        description="Trace the lifespan of TCP sessions and summarize",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add = parser.add_argument
    add("-T", "--time", action="store_true", help="include time column on output (HH:MM:SS)")
    add("-t", "--timestamp", action="store_true",
        help="include timestamp on output (seconds since the first session)")
    add("-w", "--wide", action="store_true", help="wide column output (fits IPv6 addresses)")
    add("-s", "--csv", action="store_true", help="comma separated values output")
    add("--json", action="store_true",
        help="one JSON object per session per line (exact bytes, duration in ns)")
    add("-p", "--pid", type=pid_number, help="trace this PID only")
    add("-L", "--localport", type=port_list, metavar="LOCALPORT",
        help="comma-separated list of local ports to trace.")
    add("-D", "--remoteport", type=port_list, metavar="REMOTEPORT",
        help="comma-separated list of remote ports to trace (with -L: both must match).")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", "--ipv4", action="store_true", help="trace IPv4 sessions only")
    family.add_argument("-6", "--ipv6", action="store_true", help="trace IPv6 sessions only")
    add("--cgroup", action="store_true",
        help="add a CGROUP column: the socket's cgroup v2 path (--json always has it)")
    add("--cgroup-filter", metavar="PATH",
        help="only sockets of this cgroup and the cgroups below it: a path as the CGROUP "
             "column shows it (/system.slice/nginx.service), or its directory")
    add("--verbose", action="store_true", help="log libbpf's messages on stderr")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cgroup" in argv[:-1] and not argv[argv.index("--cgroup") + 1].startswith("-"):
        parser.error("--cgroup takes no path: it adds the CGROUP column; to trace the "
                     "sockets of one cgroup, use --cgroup-filter PATH")
    args = parser.parse_args(argv)
    if args.json and args.csv:
        parser.error("--json and -s/--csv are two output formats: choose one")
    if args.json and (args.time or args.timestamp or args.wide or args.cgroup):
        parser.error("-T, -t, -w and --cgroup shape the columns; --json always has 'time', "
                     "full addresses and 'cgroup'")
    return args


def options_from(args: argparse.Namespace) -> TracerOptions:
    return TracerOptions(
        filter=SessionFilter(
            pid=args.pid or 0,
            family=4 if args.ipv4 else 6 if args.ipv6 else 0,
            local_ports=args.localport or frozenset(),
            remote_ports=args.remoteport or frozenset(),
        ),
        cgroup_path=cgroup.cgroup_directory(args.cgroup_filter) if args.cgroup_filter else None,
    )


class _Stop:
    """Set by SIGINT/SIGTERM; the poll loop ends cleanly at the next wake-up."""

    requested = False

    @classmethod
    def request(cls, _signum: int, _frame: object) -> None:
        cls.requested = True


def trace(args: argparse.Namespace) -> int:
    formatter = Formatter(
        OutputStyle(wide=args.wide, csv=args.csv, json=args.json,
                    clock_time=args.time, timestamp=args.timestamp, cgroup=args.cgroup)
    )
    batch: list[str] = []

    def on_session(session: ClosedSession) -> None:
        batch.append(formatter.line(session))

    with SessionTracer(options_from(args), on_session) as tracer:
        print("Tracing TCP sessions. Hit Ctrl-C to end.", file=sys.stderr, flush=True)
        header = formatter.header()
        if header:
            print(header, flush=True)
        losses = LossReport()
        while True:
            stopping = _Stop.requested
            tracer.poll(0 if stopping else 100)  # when stopping: drain what is left
            if batch:
                # One write per wake-up: lines reach a pipe at once, not per 4 KiB.
                sys.stdout.write("\n".join(batch) + "\n")
                sys.stdout.flush()
                batch.clear()
            if stopping:
                break
            losses.as_they_happen(tracer.counters)
        losses.in_all(tracer.counters())
    return 0


LOSS_REASONS = {
    "ringbuf_drops": "not printed because the ring buffer was full",
    "session_map_full": "not tracked because the session table was full",
    "close_unseen": "never printed: their close was not seen",
}


class LossReport:
    """Sessions the tool could not print, on stderr: as they happen (at most a
    line per reason a second), and in all at exit."""

    INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._told: dict[str, int] = {}
        self._next = time.monotonic() + self.INTERVAL_S

    def as_they_happen(self, counters: Callable[[], dict[str, int]]) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.INTERVAL_S
        for name, count in counters().items():
            more = count - self._told.get(name, 0)
            if more > 0 and name in LOSS_REASONS:
                print(f"tcplife: lost {more} more sessions ({LOSS_REASONS[name]}; "
                      f"{count} so far)", file=sys.stderr, flush=True)
                self._told[name] = count

    @staticmethod
    def in_all(counters: dict[str, int]) -> None:
        logging.debug("program counters: %s", counters)  # --verbose
        for name, count in counters.items():
            if count and name in LOSS_REASONS:
                print(f"tcplife: {count} sessions {LOSS_REASONS[name]}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, so that a signal during start-up also ends cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _Stop.request)
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(message)s")
    try:
        return trace(args)
    except TcplifeError as err:
        print(f"tcplife: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `tcplife | head`): not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
