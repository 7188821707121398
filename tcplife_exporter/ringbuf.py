"""Read a BPF ring buffer through its memory mapping, many records per wake-up.

libbpf's ring_buffer__poll() calls back into Python once per record through a
ctypes trampoline; at tens of thousands of sessions per second that is most
of tcplife's CPU time. Here the records are read straight from the mapped
pages (the layout is the kernel's: include/uapi/linux/bpf.h, BPF_RINGBUF_*),
and the consumer position is published once per batch.

A record's body is read after its header says it is committed, which needs
loads kept in order: this reader follows inplace.py's rule and is used only
where the CPU keeps them (x86-64); elsewhere libbpf's consumer (libbpf.py).

Positions and headers are read and written as whole 64- and 32-bit words.
The kernel reads the consumer position at every reservation; struct.pack_into
would zero the word before writing it byte by byte, and a reservation that
saw that zero took the ring for full and dropped its record.
"""

from __future__ import annotations

import mmap
import select
from collections.abc import Callable

from .inplace import mapped

_BUSY = 1 << 31  # BPF_RINGBUF_BUSY_BIT: reserved, not committed yet
_DISCARD = 1 << 30  # BPF_RINGBUF_DISCARD_BIT
_HEADER = 8  # BPF_RINGBUF_HDR_SZ
_PUBLISH_EVERY = 256  # records: hand space back to the producers now and then


class MappedRingBuffer:
    """The consumer side of one BPF_MAP_TYPE_RINGBUF map of ``size`` bytes."""

    def __init__(self, map_fd: int, size: int, on_record: Callable[[memoryview], None]) -> None:
        page = mmap.PAGESIZE
        self._consumer = mapped(map_fd, page, "the ring buffer", writable=True)
        # The producer page, then the data pages mapped twice in a row, so
        # that a record wrapping around the end reads as one piece.
        try:
            self._producer = mapped(map_fd, page + 2 * size, "the ring buffer", offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._consumer_position = memoryview(self._consumer).cast("Q")
        self._producer_position = memoryview(self._producer).cast("Q")
        self._view = memoryview(self._producer)
        self._lengths = self._view.cast("I")  # record headers: 8-byte aligned
        self._data = page
        self._mask = size - 1
        self._on_record = on_record
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def poll(self, timeout_ms: int) -> int:
        """Deliver what is waiting; if nothing is, wait up to timeout_ms first."""
        count = self.consume()
        if count:
            return count
        self._epoll.poll(timeout_ms / 1000)  # a signal ends it early (PEP 475 retries)
        return self.consume()

    def consume(self) -> int:
        published = self._consumer_position
        consumer = published[0]
        producer = self._producer_position[0]
        view, lengths, data, mask = self._view, self._lengths, self._data, self._mask
        deliver = self._on_record
        count = 0
        while consumer < producer:
            start = data + (consumer & mask)
            length = lengths[start // 4]
            if length & _BUSY:
                break  # the producer is still writing it
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                deliver(view[start + _HEADER : start + _HEADER + size])
            consumer += (size + _HEADER + 7) & ~7
            count += 1
            if count % _PUBLISH_EVERY == 0:
                published[0] = consumer
        published[0] = consumer
        return count

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            for view in (self._lengths, self._view, self._producer_position,
                         self._consumer_position):
                view.release()
            self._producer.close()
            self._consumer.close()
            self._epoll = None
