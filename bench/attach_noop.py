"""Keeps bench/noop.bpf.o's two do-nothing programs attached until SIGINT or SIGTERM."""

import signal
import sys

from tcplife_exporter.libbpf import BpfObject


def main(path: str) -> None:
    obj = BpfObject(path)
    obj.load()
    obj.attach("noop_first")
    obj.attach("noop_second")
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
