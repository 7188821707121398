"""The BPF program's table of open sessions, sized and read from user space.

The table is two arrays indexed alike (session_keys, session_values in
bpf/tcplife.bpf.c): a socket's session sits in one of 16 slots from its hash
on, and a key of 0 marks a free slot. User space picks the size and reads the
arrays through a shared mapping, without a copy or a system call.
"""

from __future__ import annotations

import itertools
import mmap

from .btf import Btf
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject

KEYS = "session_keys"
VALUES = "session_values"


def slots_for(max_sessions: int) -> int:
    """A power of two at least twice the sessions, so that a free slot is
    almost always among the 16 the program probes."""
    return 1 << (2 * max_sessions - 1).bit_length()


def size(obj: BpfObject, max_sessions: int) -> None:
    """Before load: room for ``max_sessions`` open sessions."""
    for name in (KEYS, VALUES):
        obj.set_max_entries(name, slots_for(max_sessions))


def _mapped(obj: BpfObject, name: str, value_size: int, slots: int) -> mmap.mmap:
    stride = (value_size + 7) // 8 * 8  # array elements are 8-byte aligned
    length = -(-stride * slots // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        return mmap.mmap(obj.map_fd(name), length, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError as err:
        raise TcplifeError(f"cannot map the BPF map {name}: {err.strerror}") from None


class SessionTable:
    """The open sessions, read in place. A session written while it is read
    may come out half old, half new: a snapshot, not a transaction."""

    def __init__(self, obj: BpfObject, btf: Btf, max_sessions: int) -> None:
        slots = slots_for(max_sessions)
        self._layout = StructLayout(btf, "session")
        self._stride = (self._layout.size + 7) // 8 * 8
        self._keys = _mapped(obj, KEYS, 8, slots)
        self._values = _mapped(obj, VALUES, self._layout.size, slots)
        self._slots = slots

    def sessions(self) -> list[dict]:
        """Every occupied slot's session, as the BTF layout of struct session."""
        with memoryview(self._keys) as raw, raw.cast("Q") as keys:
            occupied = list(itertools.compress(range(self._slots), keys))
        return [self._layout.unpack(self._values, index * self._stride) for index in occupied]

    def close(self) -> None:
        self._keys.close()
        self._values.close()
