"""Closed-session records: the Python view of ``struct session_record``.

The decoder builds its layout from the BPF object's BTF, so the C header in
``bpf/tcplife.h`` stays the single definition of the record.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import asdict, dataclass

from .btf import Btf, Field
from .errors import TcplifeError

_INT_CODES = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
              (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_ADDRESS_BYTES = {4: 4, 6: 16}


@dataclass(frozen=True)
class Session:
    """One closed TCP session."""

    pid: int  # 0 when the owner is unknown
    comm: str  # "" when the owner is unknown
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
    """Turns raw ring-buffer records into ``Session`` objects."""

    def __init__(self, btf: Btf) -> None:
        size, fields = btf.struct("session_record")
        self._layout = struct.Struct(_format(size, fields))
        self._names = [f.name for f in fields if not f.name.startswith("_")]
        flags = btf.enum("record_flag")
        self._birth_seen = flags["RECORD_BIRTH_SEEN"]
        self._established = flags["RECORD_ESTABLISHED"]
        self._directions = {
            value: name.removeprefix("DIRECTION_").lower()
            for name, value in btf.enum("direction").items()
        }

    @property
    def size(self) -> int:
        return self._layout.size

    def decode(self, data: bytes) -> Session:
        if len(data) < self._layout.size:
            raise TcplifeError(
                f"a session record of {len(data)} bytes is shorter than "
                f"the {self._layout.size} bytes its BTF describes"
            )
        raw = dict(zip(self._names, self._layout.unpack_from(data)))
        family = raw["family"]
        if family not in _FAMILIES:
            raise TcplifeError(f"a session record has an unknown address family {family}")
        flags = raw["flags"]
        birth_seen = bool(flags & self._birth_seen)
        return Session(
            pid=raw["pid"],
            comm=raw["comm"].split(b"\0", 1)[0].decode(errors="replace"),
            family=family,
            laddr=_address(family, raw["laddr"]),
            lport=raw["lport"],
            raddr=_address(family, raw["raddr"]),
            rport=raw["rport"],
            direction=self._directions.get(raw["direction"], "unknown"),
            birth_seen=birth_seen,
            established=bool(flags & self._established),
            duration_ns=raw["duration_ns"] if birth_seen else None,
            tx_bytes=raw["tx_bytes"],
            rx_bytes=raw["rx_bytes"],
            close_ns=raw["close_ns"],
        )


def _format(size: int, fields: list[Field]) -> str:
    """A struct-module format that reads the fields at their BTF offsets."""
    parts, position = ["="], 0
    for field in fields:
        if field.offset < position:
            raise TcplifeError(f"session_record field {field.name!r} overlaps another")
        if field.offset > position:
            parts.append(f"{field.offset - position}x")
        if field.name.startswith("_"):  # padding
            parts.append(f"{field.size}x")
        elif field.array_len:
            parts.append(f"{field.array_len}s")
        else:
            parts.append(_INT_CODES[(field.size, field.signed)])
        position = field.offset + field.size
    if size > position:
        parts.append(f"{size - position}x")
    return "".join(parts)


def _address(family: int, packed: bytes) -> str:
    return socket.inet_ntop(_FAMILIES[family], packed[: _ADDRESS_BYTES[family]])
