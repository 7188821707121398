"""Two network namespaces joined by a veth pair: hosts with real addresses."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    netns: str
    ipv4: str
    ipv6: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class VethPair:
    """Hosts a and b in their own namespaces; removed again on exit."""

    def __init__(self, prefix: str = "tl") -> None:
        tag = f"{prefix}{os.getpid() % 100000}"
        # 198.18.0.0/15 is reserved for benchmarking (RFC 2544); fd18::/64 is ULA.
        self.a = Host(f"{tag}a", "198.18.0.1", "fd18::1")
        self.b = Host(f"{tag}b", "198.18.0.2", "fd18::2")

    def __enter__(self) -> VethPair:
        a, b = self.a, self.b
        for host in (a, b):
            _ip("netns", "add", host.netns)
        try:
            _ip("link", "add", "veth-a", "netns", a.netns, "type", "veth",
                "peer", "name", "veth-b", "netns", b.netns)
            for host, dev in ((a, "veth-a"), (b, "veth-b")):
                _ip("-n", host.netns, "addr", "add", f"{host.ipv4}/24", "dev", dev)
                _ip("-n", host.netns, "addr", "add", f"{host.ipv6}/64", "dev", dev, "nodad")
                _ip("-n", host.netns, "link", "set", dev, "up")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
