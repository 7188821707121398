"""Cgroup v2 ids, as the program reports them, turned into paths.

A cgroup's id is the inode number of its directory in the cgroup2 file
system, so a walk of the mounted hierarchy maps every live cgroup. The map is
cached and walked again only when an id it does not hold appears: a cgroup
created since. An id still missing after that walk belongs to a cgroup
removed since its socket was created (the socket keeps the cgroup alive) or
outside this mount (a cgroup namespace): it is shown as ``(unknown:ID)``,
and remembered, so that it costs one walk.
"""

from __future__ import annotations

import os

from . import cgroup


def unresolved(cgroup_id: int) -> str:
    """How a cgroup that no path leads to is shown."""
    return f"(unknown:{cgroup_id})"


class CgroupPaths:
    def __init__(self, root: str | None = None) -> None:
        self.root = root or cgroup.hierarchy_root()
        self._paths: dict[int, str] = {}
        self._missing: set[int] = set()
        self._walk()

    def path_of(self, cgroup_id: int) -> str:
        """The cgroup's path below the hierarchy's root ("/" for the root itself)."""
        path = self.path_or_none(cgroup_id)
        return unresolved(cgroup_id) if path is None else path

    def path_or_none(self, cgroup_id: int) -> str | None:
        """The cgroup's path, or None where no path leads to it."""
        path = self._paths.get(cgroup_id)
        if path is None and cgroup_id not in self._missing:
            self._walk()
            path = self._paths.get(cgroup_id)
            if path is None:
                self._missing.add(cgroup_id)
        return path

    def _walk(self) -> None:
        # A directory removed during the walk is skipped (os.walk ignores the error).
        for directory, _subdirectories, _files in os.walk(self.root):
            try:
                inode = os.stat(directory).st_ino
            except OSError:
                continue
            relative = os.path.relpath(directory, self.root)
            self._paths[inode] = "/" if relative == "." else f"/{relative}"
