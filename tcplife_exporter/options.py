"""Options shared by both commands, and their translation into the program's
`.rodata`: which sessions the kernel reports.

Neutral ground: the configuration and the command line build these, the
program's assemblers translate them; none of them imports the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_BOUNDS = 32  # bucket bounds per histogram: MAX_BOUNDS in bpf/tcplife.h
PORT_BITMAP_BYTES = 65536 // 8


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions the kernel reports; empty means all. Applied before load."""

    pid: int = 0
    family: int = 0  # 4 or 6; 0 for both
    local_ports: frozenset[int] = field(default_factory=frozenset)
    remote_ports: frozenset[int] = field(default_factory=frozenset)

    def rodata(self) -> dict[str, int | bytes]:
        """The settings of bpf/sockets.h."""
        return {
            "filter_tgid": self.pid,
            "filter_family": self.family,
            "filter_lports": int(bool(self.local_ports)),
            "filter_rports": int(bool(self.remote_ports)),
            "lport_bitmap": port_bitmap(self.local_ports),
            "rport_bitmap": port_bitmap(self.remote_ports),
        }


def port_bitmap(ports: Iterable[int]) -> bytes:
    bitmap = bytearray(PORT_BITMAP_BYTES)
    for port in ports:
        bitmap[port >> 3] |= 1 << (port & 7)
    return bytes(bitmap)
