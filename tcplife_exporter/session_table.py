"""The BPF program's table of open sessions, sized and read from user space.

The table is two arrays indexed alike (session_keys, session_values in
bpf/tcplife.bpf.c): a socket's session sits in one of 16 slots from its hash
on, and a key of 0 marks a free slot. User space picks the size and reads the
arrays through a shared mapping, without a copy or a system call.
"""

from __future__ import annotations

import itertools
import mmap
import struct

from .btf import Btf
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject

KEYS = "session_keys"
VALUES = "session_values"
MAPS = (KEYS, VALUES)


def slots_for(max_sessions: int) -> int:
    """A power of two at least twice the sessions, so that a free slot is
    almost always among the 16 the program probes."""
    return 1 << (2 * max_sessions - 1).bit_length()


def size(obj: BpfObject, max_sessions: int) -> None:
    """Before load: room for ``max_sessions`` open sessions."""
    for name in MAPS:
        obj.set_max_entries(name, slots_for(max_sessions))


def _stride(value_size: int) -> int:
    return (value_size + 7) // 8 * 8  # array elements are 8-byte aligned


def _mapped(obj: BpfObject, name: str, stride: int, slots: int) -> mmap.mmap:
    length = -(-stride * slots // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        return mmap.mmap(obj.map_fd(name), length, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError as err:
        raise TcplifeError(f"cannot map the BPF map {name}: {err.strerror}") from None


class SessionTable:
    """The open sessions, read in place while the kernel writes them."""

    def __init__(self, obj: BpfObject, btf: Btf, max_sessions: int) -> None:
        slots = slots_for(max_sessions)
        self._layout = StructLayout(btf, "session")
        self._stride = _stride(self._layout.size)
        _size, fields = btf.struct("session")
        self._birth = struct.Struct("=Q")
        self._birth_offset = next(f.offset for f in fields if f.name == "birth_ns")
        self._keys = _mapped(obj, KEYS, 8, slots)  # a __u64 a slot
        try:
            self._values = _mapped(obj, VALUES, self._stride, slots)
        except TcplifeError:
            self._keys.close()
            raise
        self._slots = slots

    def sessions(self) -> list[dict]:
        """The session of every occupied slot, as the BTF layout of struct
        session. The program publishes birth_ns last and clears it first (see
        session_publish()): a slot whose birth_ns changed while it was read was
        being refilled, and is left out."""
        with memoryview(self._keys) as raw, raw.cast("Q") as keys:
            occupied = list(itertools.compress(range(self._slots), keys))
        found = []
        for index in occupied:
            offset = index * self._stride
            session = self._layout.unpack(self._values, offset)
            (birth_now,) = self._birth.unpack_from(self._values, offset + self._birth_offset)
            if birth_now == session["birth_ns"]:
                found.append(session)
        return found

    def close(self) -> None:
        self._keys.close()
        self._values.close()
