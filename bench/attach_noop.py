"""Keeps bench/noop.bpf.o's do-nothing program attached to the root cgroup until
SIGINT or SIGTERM."""

import signal
import sys

from tcplife_exporter import cgroup
from tcplife_exporter.libbpf import BpfObject


def main(path: str) -> None:
    obj = BpfObject(path)
    obj.load()
    obj.attach_cgroup("noop_sockops", cgroup.hierarchy_root())
    print("attached", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        obj.close()


if __name__ == "__main__":
    main(sys.argv[1])
