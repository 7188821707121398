"""The `cgroup` label: a socket's cgroup path made into a label value by the
config's rules, so that users choose its cardinality.

A path is rewritten by the first rule whose regular expression matches it
whole (``replace`` may name its groups: ``\\1``, ``\\g<name>``); a path no
rule matches is cut to ``depth`` components (0: kept whole). A cgroup no path
leads to (removed before the exporter saw it) is ``unknown``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNKNOWN_CGROUP = "unknown"
_GROUP_REFERENCE = re.compile(r"\\(?:(\d+)|g<([^>]*)>)")


@dataclass(frozen=True)
class CgroupRewrite:
    pattern: re.Pattern[str]
    replace: str


def template_problem(pattern: re.Pattern[str], replace: str) -> str | None:
    """Why ``replace`` cannot expand a match of ``pattern``, or None."""
    for number, name in _GROUP_REFERENCE.findall(replace):
        group = number or name
        if group.isdigit():
            if int(group) > pattern.groups:
                return f"refers to group {group}, but the expression has {pattern.groups}"
        elif group not in pattern.groupindex:
            return f"refers to group {group!r}, which the expression does not name"
    return None


def cgroup_label(path: str | None, rewrites: tuple[CgroupRewrite, ...], depth: int) -> str:
    if path is None:
        return UNKNOWN_CGROUP
    for rule in rewrites:
        match = rule.pattern.fullmatch(path)
        if match:
            return match.expand(rule.replace)
    if depth and path != "/":
        return "/" + "/".join(path.strip("/").split("/")[:depth])
    return path
