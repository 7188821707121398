"""The tcplife command's program: every closed session as a record, read from
a ring buffer.

Data flow: TracerOptions -> .rodata (filters, records) -> the program on the
TCP stack's sock_ops callbacks -> ring buffer -> ClosedSession objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import inplace
from .cgroup_paths import CgroupPaths
from .libbpf import RingBuffer
from .options import SessionFilter
from .program import SessionProgram
from .records import ClosedSession, RecordDecoder, record_settings
from .ringbuf import MappedRingBuffer


@dataclass(frozen=True)
class TracerOptions:
    filter: SessionFilter = field(default_factory=SessionFilter)
    max_sessions: int = 65536  # concurrently open sessions tracked
    ringbuf_bytes: int = 4 << 20  # a power of two, at least a page
    wakeup_bytes: int = 64 << 10  # wake the reader once this much is waiting
    cgroup_path: str | None = None  # None: the root of the host's cgroup v2 hierarchy


class SessionTracer:
    """The program attached, and its closed sessions handed to ``on_session``
    at each ``poll``."""

    def __init__(self, options: TracerOptions,
                 on_session: Callable[[ClosedSession], None]) -> None:
        self.program = SessionProgram(options.max_sessions)
        self._ring: MappedRingBuffer | RingBuffer | None = None
        try:
            records_rodata, records_size = record_settings(options.ringbuf_bytes,
                                                           options.wakeup_bytes)
            self.program.configure({**options.filter.rodata(), **records_rodata}, records_size)
            self.program.load()
            decoder = RecordDecoder(self.program.btf, CgroupPaths())
            fd = self.program.obj.map_fd("records")
            deliver = lambda data: on_session(decoder.decode(data))  # noqa: E731
            self._ring = (MappedRingBuffer(fd, options.ringbuf_bytes, deliver)
                          if inplace.loads_in_order() else RingBuffer(fd, deliver))
            self.program.attach(options.cgroup_path)
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: int = 100) -> int:
        """Deliver waiting sessions; returns how many."""
        assert self._ring is not None
        return self._ring.poll(timeout_ms)

    def counters(self) -> dict[str, int]:
        return self.program.counters()

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.program.close()

    def __enter__(self) -> SessionTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
