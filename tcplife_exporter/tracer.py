"""Load the session tracer into the kernel and read what it reports.

Data flow: TracerOptions -> .rodata of the BPF object (set before load) ->
kernel program on the TCP stack's sock_ops callbacks (attached to the root of
the cgroup v2 hierarchy) -> ring buffer -> Session objects, and/or histograms
folded in kernel maps (see folding.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources

from . import cgroup, folding, preflight, rcu, ringbuf, session_table
from .btf import Btf
from .errors import TcplifeError
from .layout import StructLayout
from .libbpf import BpfObject, RingBuffer, num_possible_cpus
from .records import RecordDecoder, Session
from .ringbuf import MappedRingBuffer

PROGRAM = "tcp_sessions"
PORT_BITMAP_BYTES = 65536 // 8
MAX_BOUNDS = 32  # bucket bounds per histogram: MAX_BOUNDS in bpf/tcplife.h


def bpf_object_path() -> str:
    path = resources.files(__package__) / "bpf" / "tcplife.bpf.o"
    if not path.is_file():
        raise TcplifeError(
            f"the compiled BPF program {path} is missing: build it with 'make bpf' "
            "(needs clang and libbpf-dev) or reinstall the package"
        )
    return str(path)


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions the kernel reports; empty means all. Applied before load."""

    pid: int = 0
    family: int = 0  # 4 or 6; 0 for both
    local_ports: frozenset[int] = field(default_factory=frozenset)
    remote_ports: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class TracerOptions:
    filter: SessionFilter = field(default_factory=SessionFilter)
    emit_records: bool = True
    fold: folding.FoldOptions | None = None  # None: no histograms
    max_sessions: int = 65536  # concurrently open sessions tracked
    ringbuf_bytes: int = 4 << 20  # a power of two, at least a page
    wakeup_bytes: int = 64 << 10  # wake the reader once this much is waiting
    cgroup_path: str | None = None  # None: the root of the host's cgroup v2 hierarchy


def port_bitmap(ports: Iterable[int]) -> bytes:
    bitmap = bytearray(PORT_BITMAP_BYTES)
    for port in ports:
        bitmap[port >> 3] |= 1 << (port & 7)
    return bytes(bitmap)


def rodata_values(options: TracerOptions) -> dict[str, int | bytes]:
    """The program's const volatile globals for these options."""
    flt = options.filter
    values: dict[str, int | bytes] = {
        "emit_records": int(options.emit_records),
        "filter_tgid": flt.pid,
        "filter_family": flt.family,
        "filter_lports": int(bool(flt.local_ports)),
        "filter_rports": int(bool(flt.remote_ports)),
        "lport_bitmap": port_bitmap(flt.local_ports),
        "rport_bitmap": port_bitmap(flt.remote_ports),
        "ringbuf_wakeup_bytes": options.wakeup_bytes,
        "session_slot_mask": session_table.slots_for(options.max_sessions) - 1,
    }
    fold = options.fold
    if fold is not None:
        values.update(folding.fold_rodata(fold, port_bitmap(fold.labelled_ports), MAX_BOUNDS))
    # Owners and addresses cost helper calls: read them only when something uses them.
    values["need_owner"] = int(options.emit_records or bool(flt.pid)
                               or (fold is not None and fold.comm_label))
    values["need_addresses"] = int(options.emit_records
                                   or (fold is not None and bool(fold.networks)))
    return values


@dataclass(frozen=True)
class ProgramStats:
    run_time_ns: int  # counted only while kernel.bpf_stats_enabled is 1
    run_count: int


class SessionTracer:
    """The BPF program attached, and its closed sessions handed to ``on_session``.

    With ``replacing``, the new program takes the running one's place at once
    (each callback runs exactly one of the two) and, if the table sizes agree,
    its open-session table: sessions born under the old program keep their
    birth. When the constructor returns, the old program has stopped running
    and its maps hold its final values; the caller closes it.
    """

    def __init__(
        self, options: TracerOptions, on_session: Callable[[Session], None] | None = None,
        replacing: SessionTracer | None = None,
    ) -> None:
        preflight.check_all()
        self._obj = BpfObject(bpf_object_path())
        self._ring: MappedRingBuffer | RingBuffer | None = None
        self._folded: folding.FoldedReader | None = None
        self.options = options
        try:
            self._setup(options, on_session, replacing)
        except BaseException:
            self.close()
            raise

    def _setup(self, options: TracerOptions, on_session: Callable[[Session], None] | None,
               replacing: SessionTracer | None) -> None:
        btf = Btf(self._obj.btf_ptr)
        decoder = RecordDecoder(btf)
        self._counter_ids = {
            name: value for value, name in btf.enum_labels("counter", "COUNTER_").items()
            if name != "max"
        }
        self._prog_info = StructLayout(btf, "bpf_prog_info")
        self._write_rodata(btf, rodata_values(options))
        session_table.size(self._obj, options.max_sessions)
        ring_bytes = options.ringbuf_bytes if options.emit_records else folding.RINGBUF_MIN_BYTES
        self._obj.set_max_entries("records", ring_bytes)
        folding.size_maps(self._obj, options.fold)
        if replacing is not None and replacing.options.max_sessions == options.max_sessions:
            for name in session_table.MAPS:
                self._obj.reuse_map(name, replacing._obj.map_fd(name))
        self._obj.load()
        folding.fill_maps(self._obj, btf, options.fold)
        if options.fold is not None:
            self._folded = folding.FoldedReader(self._obj, btf, options.max_sessions)
        if options.emit_records and on_session is not None:
            fd = self._obj.map_fd("records")
            deliver = lambda data: on_session(decoder.decode(data))  # noqa: E731
            self._ring = (MappedRingBuffer(fd, ring_bytes, deliver) if ringbuf.supported()
                          else RingBuffer(fd, deliver))
        # Last: from here on the kernel runs this program.
        if replacing is None:
            self._obj.attach_cgroup(PROGRAM, options.cgroup_path or cgroup.hierarchy_root())
        else:
            self._obj.take_over_link(replacing._obj.hand_over_link(), PROGRAM)
            rcu.wait_for_readers()  # runs of the old program still under way

    def _write_rodata(self, btf: Btf, values: dict[str, int | bytes]) -> None:
        data = self._obj.internal_map_data(".rodata")
        variables = btf.section_variables(".rodata")
        for name, value in values.items():
            var = variables.get(name)
            if var is None:
                raise TcplifeError(f"the BPF program has no setting named {name!r}")
            if name == "duration_bounds_ns" and var.size != MAX_BOUNDS * 8:
                raise TcplifeError("the BPF object was built with a different MAX_BOUNDS")
            raw = value if isinstance(value, bytes) else value.to_bytes(var.size, "little")
            if len(raw) != var.size:
                raise TcplifeError(f"setting {name!r} takes {var.size} bytes, not {len(raw)}")
            data[var.offset : var.offset + var.size] = raw

    def poll(self, timeout_ms: int = 100) -> int:
        """Deliver waiting sessions; returns how many."""
        if self._ring is None:
            raise TcplifeError("this tracer was started without a session consumer")
        return self._ring.poll(timeout_ms)

    def folded(self) -> folding.FoldedReader:
        """The reader of the folded maps; built once, used at every scrape."""
        if self._folded is None:
            raise TcplifeError("this tracer was started without folded metrics")
        return self._folded

    def program_stats(self) -> ProgramStats:
        """The program's run statistics."""
        info = self._prog_info.unpack(self._obj.program_info(PROGRAM, self._prog_info.size))
        return ProgramStats(info["run_time_ns"], info["run_cnt"])

    def counters(self) -> dict[str, int]:
        """The program's counters (enum counter in tcplife.h), summed over CPUs."""
        cpus = num_possible_cpus()
        per_cpu = (ctypes.c_uint64 * cpus)()
        totals = {}
        for name, index in self._counter_ids.items():
            self._obj.lookup("counters", ctypes.c_uint32(index), per_cpu)
            totals[name] = sum(per_cpu)
        return totals

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._folded is not None:
            self._folded.close()
            self._folded = None
        self._obj.close()

    def __enter__(self) -> SessionTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
