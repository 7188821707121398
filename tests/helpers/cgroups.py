"""This process's cgroup v2, as tcplife and the exporter show cgroups."""

from __future__ import annotations


def own_cgroup() -> str:
    """The path below the hierarchy's root, from /proc/self/cgroup's v2 line."""
    with open("/proc/self/cgroup") as groups:
        return next(line for line in groups if line.startswith("0::")).strip()[3:]
