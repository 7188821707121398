"""Reading BPF maps in place, through their memory mapping, while the kernel
writes them: the one rule both in-place readers follow.

The rule: user space reads in place only
- single aligned 64- or 32-bit words, each valid on its own (the open-session
  labels, a ring buffer's positions), on any CPU: a word is one load, read as
  a memoryview item (one memcpy of the item's size, one instruction); and
- data that must be read after another word (a ring-buffer record's body
  after its header says it is committed) only where the CPU keeps loads in
  program order: x86-64 (TSO). Python cannot place a load barrier, so other
  architectures read the ring buffer through libbpf's consumer, whose C code
  uses acquire loads.
"""

from __future__ import annotations

import mmap
import platform

from .errors import TcplifeError


def loads_in_order() -> bool:
    """Whether the CPU never lets a load pass an earlier load."""
    return platform.machine() in ("x86_64", "AMD64")


def mapped(fd: int, length: int, what: str, writable: bool = False,
           offset: int = 0) -> mmap.mmap:
    """A shared mapping of ``length`` bytes (rounded up to pages) of a BPF map."""
    length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
    protection = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, protection, offset=offset)
    except OSError as err:
        raise TcplifeError(f"cannot map {what}: {err.strerror}") from None
