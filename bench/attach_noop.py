"""Attaches bench/noop.bpf.o's do-nothing programs.

    attach_noop.py OBJECT             noop_sockops on the root cgroup, until SIGINT/SIGTERM
    attach_noop.py OBJECT --cycle S   both programs (root cgroup, tracepoint) attached for
                                      S seconds, then detached for S seconds, over and over
"""

import argparse
import signal
import sys
import time

from tcplife_exporter import cgroup
from tcplife_exporter.libbpf import BpfObject


def attached(path: str, tracepoint: bool) -> BpfObject:
    obj = BpfObject(path)
    obj.load()
    obj.attach_cgroup("noop_sockops", cgroup.hierarchy_root())
    if tracepoint:
        obj.attach("noop_tracepoint")
    return obj


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("object")
    parser.add_argument("--cycle", type=float, metavar="SECONDS")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.cycle is None:
            obj = attached(args.object, tracepoint=False)
            print("attached", file=sys.stderr, flush=True)
            try:
                signal.pause()
            finally:
                obj.close()
        print("cycling", file=sys.stderr, flush=True)
        cycles = 0
        while True:
            obj = attached(args.object, tracepoint=True)
            try:
                time.sleep(args.cycle)
            finally:
                obj.close()
            cycles += 1
            time.sleep(args.cycle)
    except KeyboardInterrupt:
        if args.cycle is not None:
            print(f"cycles {cycles}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
