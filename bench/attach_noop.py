"""Attaches bench/noop.bpf.o's do-nothing programs.

    attach_noop.py OBJECT               noop_sockops on the root cgroup, until SIGINT/SIGTERM
    attach_noop.py OBJECT --tracepoint  noop_tracepoint only (where bpftrace attaches), the same
    attach_noop.py OBJECT --cycle S     both programs (root cgroup, tracepoint) attached for
                                        S seconds, then detached for S seconds, over and over
"""

import argparse
import signal
import sys
import threading

from tcplife_exporter import cgroup
from tcplife_exporter.libbpf import BpfObject

# Set by SIGINT/SIGTERM. A flag, not KeyboardInterrupt: an exception raised while
# libbpf calls back into Python (its log hook) would be swallowed by ctypes.
stop = threading.Event()


def attached(path: str, sockops: bool, tracepoint: bool) -> BpfObject:
    obj = BpfObject(path)
    obj.load()
    if sockops:
        obj.attach_cgroup("noop_sockops", cgroup.hierarchy_root())
    if tracepoint:
        obj.attach("noop_tracepoint")
    return obj


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("object")
    parser.add_argument("--cycle", type=float, metavar="SECONDS")
    parser.add_argument("--tracepoint", action="store_true")
    args = parser.parse_args()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.cycle is None:
        obj = attached(args.object, sockops=not args.tracepoint, tracepoint=args.tracepoint)
        print("attached", file=sys.stderr, flush=True)
        stop.wait()
        obj.close()
        return
    print("cycling", file=sys.stderr, flush=True)
    cycles = 0
    while not stop.is_set():
        obj = attached(args.object, sockops=True, tracepoint=True)
        stop.wait(args.cycle)
        obj.close()
        cycles += 1
        stop.wait(args.cycle)
    print(f"cycles {cycles}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
