"""Waiting from user space until no CPU still runs a replaced BPF program.

The kernel runs cgroup BPF programs inside an RCU read-side section, and
membarrier(MEMBARRIER_CMD_GLOBAL) returns only after an RCU grace period
(synchronize_rcu() in kernel/sched/membarrier.c): once it returns, every run
that started before is finished, so the old program's maps hold their final
values.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import time

log = logging.getLogger(__name__)

MEMBARRIER_CMD_GLOBAL = 1
SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}  # asm/unistd.h of each architecture
FALLBACK_WAIT_S = 0.5  # far longer than any run of the program

_libc = ctypes.CDLL(None, use_errno=True)


def wait_for_readers() -> None:
    number = SYS_MEMBARRIER.get(platform.machine())
    if number is not None and _libc.syscall(number, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0:
        return
    # nohz_full CPUs refuse the global command; a pause is then the best bound.
    log.debug("membarrier unavailable (errno %d): waiting %.1f s instead",
              ctypes.get_errno(), FALLBACK_WAIT_S)
    time.sleep(FALLBACK_WAIT_S)
