"""The program's table of open sessions: sized, handed over at a reload, and
read in place to count open sessions by their labels.

The table is one array of slots (bpf/open_sessions.h), struct open_session
in session_slots. Each slot holds its session's labels (struct
session_labels), one 64-bit word that the program writes whole once the slot
is filled and clears first when it frees it (0: no labels). Reading only
that word, one load per slot, needs no ordering between loads (inplace.py's
rule), on any CPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .btf import Btf
from .errors import TcplifeError
from .inplace import mapped
from .layout import StructLayout
from .libbpf import BpfObject

SLOTS = "session_slots"
MAPS = (SLOTS,)


def slots_for(max_sessions: int) -> int:
    """A power of two at least twice the sessions, so that a free slot is
    almost always among the 16 the program probes."""
    return 1 << (2 * max_sessions - 1).bit_length()


def size(obj: BpfObject, max_sessions: int) -> None:
    """Before load: room for ``max_sessions`` open sessions."""
    obj.set_max_entries(SLOTS, slots_for(max_sessions))


@dataclass(frozen=True)
class OpenLabels:
    """The labels of open sessions, as the kernel gave them at their birth."""

    direction: str  # "inbound" or "outbound"
    family: int
    port: int  # 0: other
    network: int  # 0: other, else 1 + index into the networks of `rules`
    rules: int  # which label rules gave them (folding.LabelRules, numbered by the exporter)


class OpenSessions:
    """Counts the open sessions of a loaded program, by labels, at scrape time."""

    def __init__(self, obj: BpfObject, btf: Btf, max_sessions: int) -> None:
        slots = slots_for(max_sessions)
        size, fields = btf.struct("open_session")
        stride = (size + 7) // 8 * 8  # array elements are 8-byte aligned
        offset = next(f.offset for f in fields if f.name == "labels")
        if offset % 8:
            raise TcplifeError("struct open_session's labels are not an aligned word")
        self._labels = StructLayout(btf, "session_labels")
        self._directions = btf.enum_labels("direction", "DIRECTION_")
        self._mapping = mapped(obj.map_fd(SLOTS), stride * slots, f"the BPF map {SLOTS}")
        self._views = [memoryview(self._mapping)]
        self._views.append(self._views[-1].cast("Q"))
        words_per_slot = stride // 8
        self._views.append(self._views[-1][offset // 8 : slots * words_per_slot : words_per_slot])

    def count(self) -> Counter[OpenLabels]:
        by_word = Counter(filter(None, self._views[-1].tolist()))  # 0: no labels
        found: Counter[OpenLabels] = Counter()
        for word, sessions in by_word.items():
            labels = self._labels.unpack(word.to_bytes(8, "little"))
            direction = self._directions.get(labels["direction"], "unknown")
            found[OpenLabels(direction, labels["family"], labels["port"], labels["network"],
                             labels["rules"])] += sessions
        return found

    def close(self) -> None:
        for view in reversed(self._views):
            view.release()
        self._mapping.close()
