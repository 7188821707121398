"""Checks that turn the usual reasons a BPF tool cannot start into one sentence."""

from __future__ import annotations

import os
import platform
import re

from .errors import TcplifeError

KERNEL_BTF = "/sys/kernel/btf/vmlinux"
# sock_ops programs may call bpf_get_current_task_btf() from 5.15 (README, "Supported
# systems"). Only named after a failed load: vendors backport BPF to older version numbers.
MINIMUM_KERNEL = (5, 15)

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39


def _status_field(name: str, status_path: str) -> str:
    with open(status_path) as status:
        for line in status:
            if line.startswith(f"{name}:"):
                return line.split()[1]
    return "0"


def effective_capabilities(status_path: str = "/proc/self/status") -> int:
    return int(_status_field("CapEff", status_path), 16)


def seccomp_filtered(status_path: str = "/proc/self/status") -> bool:
    """Whether a seccomp filter screens this process's system calls (mode 2)."""
    return _status_field("Seccomp", status_path) == "2"


def refused_load_reason() -> str:
    """Why loading failed with EPERM once the capabilities were found present."""
    if seccomp_filtered():
        return ("this process has the capabilities but runs under a seccomp filter, the "
                "likely cause: older default profiles of container runtimes (podman's on "
                "Debian 12, for one) allow bpf() only with CAP_SYS_ADMIN; use a profile that "
                "allows it with CAP_BPF (containerd's since 2022), or seccompProfile "
                "Unconfined for this pod")
    return "run as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"


def missing_capabilities(effective: int) -> list[str]:
    """What is missing to load and attach the program, [] if nothing.

    CAP_BPF creates maps and loads programs, CAP_PERFMON lets a program read
    kernel memory (the socket's fields), CAP_NET_ADMIN loads and attaches a
    sock_ops program (Linux 5.8+); CAP_SYS_ADMIN covers all three.
    """
    if effective & (1 << CAP_SYS_ADMIN):
        return []
    wanted = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON, "CAP_NET_ADMIN": CAP_NET_ADMIN}
    return [name for name, bit in wanted.items() if not effective & (1 << bit)]


def check_kernel_btf(path: str = KERNEL_BTF) -> None:
    if not os.path.exists(path):
        raise TcplifeError(
            f"this kernel exposes no BTF ({path} is missing): "
            "tracing needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.5 or newer)"
        )


def older_kernel_note(release: str | None = None) -> str:
    """A clause to end a refused load with when this kernel is older than the
    program needs, else ''."""
    release = release or platform.release()
    version = re.match(r"(\d+)\.(\d+)", release)
    if not version or tuple(map(int, version.groups())) >= MINIMUM_KERNEL:
        return ""
    major, minor = MINIMUM_KERNEL
    return (f"; this kernel ({release}) is older than Linux {major}.{minor}, the oldest "
            "the program runs on")


def check_privileges() -> None:
    missing = missing_capabilities(effective_capabilities())
    if missing:
        raise TcplifeError(
            "tracing TCP sessions needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; "
            f"this process lacks {_spoken_list(missing)}"
        )


def _spoken_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_all() -> None:
    check_privileges()
    check_kernel_btf()
