"""Where the program attaches: the root of the cgroup v2 hierarchy.

Every socket belongs to a cgroup v2 (the root one unless its creator was
placed elsewhere), and a program attached to the root runs for the sockets of
all cgroups below it, in every network namespace.
"""

from __future__ import annotations

import ctypes
import os
import sys

from .errors import TcplifeError

MOUNTINFO = "/proc/self/mountinfo"


def cgroup2_mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """(root within the hierarchy, mount point) of every cgroup2 mount."""
    mounts = []
    with open(mountinfo) as file:
        for line in file:
            fields = line.split()
            separator = fields.index("-")  # optional fields come before it
            if fields[separator + 1] == "cgroup2":
                mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(escaped, char)
    return path


def hierarchy_root(mountinfo: str = MOUNTINFO) -> str:
    """The mount point of the whole cgroup v2 hierarchy (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified where cgroup v1 controllers are mounted too)."""
    for root, mount_point in cgroup2_mounts(mountinfo):
        if root == "/":
            return mount_point
    raise TcplifeError(
        "no cgroup v2 hierarchy is mounted: mount it (mount -t cgroup2 none /sys/fs/cgroup) "
        "or name one with --cgroup.path"
    )


CGROUP2_SUPER_MAGIC = 0x63677270  # statfs(2) f_type of cgroup2
_libc = ctypes.CDLL(None, use_errno=True)


def is_cgroup2(path: str) -> bool:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return int.from_bytes(buf.raw[:8], sys.byteorder) == CGROUP2_SUPER_MAGIC


def _as_directory(path: str) -> tuple[str, str]:
    """Where a directory ``path`` may hold cgroup v2: itself, or its ``unified``
    directory where cgroup v1 controllers are mounted at ``path`` too (hybrid)."""
    return path, os.path.join(path, "unified")


def _first_cgroup2(candidates: tuple[str, ...]) -> str | None:
    return next((candidate for candidate in candidates if is_cgroup2(candidate)), None)


def resolve(path: str) -> str:
    """``path`` if it is a cgroup v2 directory, or its ``unified`` directory where
    cgroup v1 controllers are mounted at ``path`` too (a hybrid layout)."""
    found = _first_cgroup2(_as_directory(path))
    if found is None:
        raise TcplifeError(f"{path} is not a cgroup v2 directory (nor is {path}/unified)")
    return found


def cgroup_directory(path: str) -> str:
    """The directory of a cgroup named by its directory (as resolve() takes it) or
    by its path below the hierarchy's root, as tcplife shows it:
    /system.slice/nginx.service."""
    root = hierarchy_root()
    below_root = os.path.normpath(os.path.join(root, path.lstrip("/")))
    found = _first_cgroup2((*_as_directory(path), below_root))
    if found is None:
        raise TcplifeError(f"no cgroup v2 {path}: neither a cgroup v2 directory nor a cgroup "
                           f"below the hierarchy's root {root}")
    return found


def open_directory(path: str) -> int:
    """A descriptor of the cgroup v2 directory to attach to; the caller closes it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise TcplifeError(f"cannot open the cgroup {path}: {err.strerror}") from None
