"""Closed-session records: the Python view of ``struct session_record``, and the
settings of the program part that emits them (bpf/records.h).

The decoder builds its layout from the BPF object's BTF, so the C header in
``bpf/tcplife.h`` stays the single definition of the record.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import asdict, dataclass

from .btf import Btf
from .cgroup_paths import CgroupPaths
from .errors import TcplifeError
from .layout import StructLayout

RINGBUF_MIN_BYTES = 4096  # a page: the smallest ring buffer the kernel accepts
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
Settings = tuple[dict[str, int], dict[str, int]]  # (.rodata, map sizes)


def record_settings(ringbuf_bytes: int, wakeup_bytes: int) -> Settings:
    """The settings of bpf/records.h for a program that emits every session."""
    return {"emit_records": 1, "ringbuf_wakeup_bytes": wakeup_bytes}, {"records": ringbuf_bytes}


def no_records() -> Settings:
    """The settings of bpf/records.h for a program that emits none (the exporter's):
    the ring buffer stays at its smallest size, never written."""
    return {"emit_records": 0}, {"records": RINGBUF_MIN_BYTES}
_ADDRESS_BYTES = {4: 4, 6: 16}


@dataclass  # not frozen: a frozen dataclass takes twice as long to build
class ClosedSession:
    """One closed TCP session."""

    pid: int  # 0 when the owner is unknown
    comm: str  # "" when the owner is unknown
    cgroup: str  # the socket's cgroup v2 path, below the hierarchy's root
    family: int  # 4 or 6
    laddr: str
    lport: int
    raddr: str
    rport: int
    direction: str  # "inbound", "outbound" or "unknown"
    birth_seen: bool
    established: bool
    duration_ns: int | None  # None when the birth was not seen
    tx_bytes: int
    rx_bytes: int
    close_ns: int  # CLOCK_MONOTONIC

    def as_json(self) -> dict:
        return asdict(self)


class RecordDecoder:
    """Turns raw ring-buffer records into ``ClosedSession`` objects."""

    def __init__(self, btf: Btf, cgroups: CgroupPaths) -> None:
        self._layout = StructLayout(btf, "session_record")
        self._cgroups = cgroups
        flags = btf.enum("record_flag")
        self._birth_seen = flags["RECORD_BIRTH_SEEN"]
        self._established = flags["RECORD_ESTABLISHED"]
        self._directions = btf.enum_labels("direction", "DIRECTION_")

    @property
    def size(self) -> int:
        return self._layout.size

    def decode(self, data: bytes) -> ClosedSession:
        raw = self._layout.unpack(data)
        family = raw["family"]
        if family not in _FAMILIES:
            raise TcplifeError(f"a session record has an unknown address family {family}")
        flags = raw["flags"]
        birth_seen = bool(flags & self._birth_seen)
        return ClosedSession(
            pid=raw["pid"],
            comm=_comm_text(raw["comm"]),
            cgroup=self._cgroups.path_of(raw["cgroup_id"]),
            family=family,
            laddr=address_text(family, raw["laddr"]),
            lport=raw["lport"],
            raddr=address_text(family, raw["raddr"]),
            rport=raw["rport"],
            direction=self._directions.get(raw["direction"], "unknown"),
            birth_seen=birth_seen,
            established=bool(flags & self._established),
            duration_ns=raw["duration_ns"] if birth_seen else None,
            tx_bytes=raw["tx_bytes"],
            rx_bytes=raw["rx_bytes"],
            close_ns=raw["close_ns"],
        )


# Caches: tcplife decodes tens of thousands of records a second, and their
# addresses and process names repeat.
@functools.lru_cache(maxsize=4096)
def address_text(family: int, packed: bytes) -> str:
    return socket.inet_ntop(_FAMILIES[family], packed[: _ADDRESS_BYTES[family]])


@functools.lru_cache(maxsize=4096)
def _comm_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")
