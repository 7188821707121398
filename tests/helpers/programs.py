"""Which BPF programs the kernel holds, and which of them a process holds."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path


def loaded_programs() -> set[int]:
    """Ids of every BPF program loaded in the kernel, by bpftool's account."""
    shown = subprocess.run(["bpftool", "prog", "show", "--json"], check=True,
                           capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(shown)}


def programs_of(pid: int) -> set[int]:
    """Ids of the programs a process holds: its program and link fds name them."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            ids.update(int(m) for m in re.findall(r"^prog_id:\s+(\d+)$",
                                                  info.read_text(), re.M))
    return ids


def unloaded(ids: set[int], timeout: float = 5) -> bool:
    """The kernel frees a program shortly after its last user goes (RCU): wait for it."""
    deadline = time.monotonic() + timeout
    while ids & loaded_programs():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
