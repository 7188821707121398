"""The BPF program in the kernel: opened, configured, loaded and attached.

Both commands go through the same steps and assemble the rest themselves:
``tcplife`` a ring-buffer reader (tracer.py), the exporter the readers of its
folded maps (exporter.py). Each part of the program translates its own
settings into `.rodata` (options.py, tracer.py, folding.py); this module only
writes them, sizes the open-session table, and swaps programs at a reload.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from importlib import resources

from . import cgroup, preflight, rcu, session_table
from .btf import Btf
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject, num_possible_cpus
from .options import MAX_BOUNDS

PROGRAM = "tcp_sessions"


def bpf_object_path() -> str:
    path = resources.files(__package__) / "bpf" / "tcplife.bpf.o"
    if not path.is_file():
        raise TcplifeError(
            f"the compiled BPF program {path} is missing: build it with 'make bpf' "
            "(needs clang and libbpf-dev) or reinstall the package"
        )
    return str(path)


@dataclass(frozen=True)
class ProgramStats:
    run_time_ns: int  # counted only while kernel.bpf_stats_enabled is 1
    run_count: int


class SessionProgram:
    """One copy of the program. Steps, in order: construct (opens the object and
    sizes the table for ``max_sessions``), ``configure``, ``load``, then the
    caller fills maps and builds readers, then ``attach`` or ``take_over``."""

    def __init__(self, max_sessions: int) -> None:
        preflight.check_all()
        self.max_sessions = max_sessions
        self.obj = BpfObject(bpf_object_path())
        try:
            self.btf = Btf(self.obj.btf_ptr)
            self._counter_ids = {
                name: value for value, name in self.btf.enum_labels("counter", "COUNTER_").items()
                if name != "max"
            }
            self._prog_info = StructLayout(self.btf, "bpf_prog_info")
            session_table.size(self.obj, max_sessions)
        except BaseException:
            self.obj.close()
            raise

    def configure(self, rodata: dict[str, int | bytes], map_sizes: dict[str, int],
                  value_sizes: dict[str, int] | None = None,
                  preallocated: tuple[str, ...] = ()) -> None:
        """Before load: the settings of every part, and the maps' sizes (entries;
        bytes per value where that is not the value type's; hash maps whose
        entries are all allocated at creation)."""
        rodata = {**rodata, "session_slot_mask": session_table.slots_for(self.max_sessions) - 1}
        data = self.obj.internal_map_data(".rodata")
        variables = self.btf.section_variables(".rodata")
        for name, value in rodata.items():
            var = variables.get(name)
            if var is None:
                raise TcplifeError(f"the BPF program has no setting named {name!r}")
            if name == "duration_bounds_ns" and var.size != MAX_BOUNDS * 8:
                raise TcplifeError("the BPF object was built with a different MAX_BOUNDS")
            raw = value if isinstance(value, bytes) else value.to_bytes(var.size, "little")
            if len(raw) != var.size:
                raise TcplifeError(f"setting {name!r} takes {var.size} bytes, not {len(raw)}")
            data[var.offset : var.offset + var.size] = raw
        for name, entries in map_sizes.items():
            self.obj.set_max_entries(name, entries)
        for name, size in (value_sizes or {}).items():
            self.obj.set_value_size(name, size)
        for name in preallocated:
            self.obj.preallocate(name)

    def share_maps(self, other: SessionProgram, names: tuple[str, ...]) -> None:
        """Before load: use ``other``'s maps of these names instead of new ones."""
        for name in names:
            self.obj.reuse_map(name, other.obj.map_fd(name))

    def take_table_of(self, other: SessionProgram) -> bool:
        """Before load: carry on ``other``'s open sessions, if the tables agree in size."""
        if other.max_sessions != self.max_sessions:
            return False
        self.share_maps(other, session_table.MAPS)
        return True

    def load(self) -> None:
        try:
            self.obj.load()
        except TcplifeError as refused:
            raise TcplifeError(f"{refused}{preflight.older_kernel_note()}") from None

    def attach(self, cgroup_path: str | None) -> None:
        """From here on the kernel runs this program for the sockets of the
        cgroup (None: the root of the host's cgroup v2 hierarchy)."""
        self.obj.attach_cgroup(PROGRAM, cgroup_path or cgroup.hierarchy_root())

    def take_over(self, other: SessionProgram) -> None:
        """Run in ``other``'s place, at once (each callback runs exactly one of
        the two); on return, ``other`` has stopped running and its maps hold
        their final values. The caller closes it."""
        self.obj.take_over_link(other.obj.hand_over_link(), PROGRAM)
        rcu.wait_for_readers()  # runs of the old program still under way

    def program_stats(self) -> ProgramStats:
        info = self._prog_info.unpack(self.obj.program_info(PROGRAM, self._prog_info.size))
        return ProgramStats(info["run_time_ns"], info["run_cnt"])

    def counters(self) -> dict[str, int]:
        """The program's counters (enum counter in tcplife.h), summed over CPUs."""
        cpus = num_possible_cpus()
        per_cpu = (ctypes.c_uint64 * cpus)()
        totals = {}
        for name, index in self._counter_ids.items():
            self.obj.lookup("counters", ctypes.c_uint32(index), per_cpu)
            totals[name] = sum(per_cpu)
        return totals

    def close(self) -> None:
        self.obj.close()
