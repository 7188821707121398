"""A systemd unit's [Service] settings, and its ExecStart run under them by
tests/helpers/sandbox_exec.py, as far as they can be applied without systemd."""

from __future__ import annotations

import errno
import functools
import json
import shlex
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_UID = 64123  # in systemd's DynamicUser range (61184-65519), used by nobody here
SYSTEM_PYTHON = "/usr/bin/python3"  # the one python3-seccomp is installed for


def service_settings(unit: Path) -> dict[str, list[str]]:
    """Each key of the [Service] section with its values, in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@functools.cache
def syscall_group(name: str) -> frozenset[str]:
    """The system calls of a group such as @system-service, nested groups expanded."""
    listed = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True,
                            capture_output=True, text=True).stdout
    calls: set[str] = set()
    for line in listed.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= syscall_group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def allowed_syscalls(filters: list[str]) -> set[str]:
    """systemd's reading of SystemCallFilter= lines that start with an allow list:
    later plain lines add to it, lines starting with ~ take away."""
    allowed: set[str] = set()
    for line in filters:
        remove = line.startswith("~")
        for item in line.lstrip("~").split():
            calls = syscall_group(item) if item.startswith("@") else {item}
            allowed = allowed - calls if remove else allowed | calls
    return allowed


def capability_names(value: str) -> list[str]:
    """CAP_BPF CAP_PERFMON -> bpf, perfmon (setpriv's spelling)."""
    return [cap.lower().removeprefix("cap_") for cap in value.split()]


def spec(settings: dict[str, list[str]]) -> dict:
    def one(key: str, default: str = "") -> str:
        return settings.get(key, [default])[-1]

    def yes(key: str) -> bool:
        return one(key, "no") in ("yes", "true", "1")

    assert not one("SystemCallFilter", "~").startswith("~"), "deny-list filters not emulated"
    families = settings.get("RestrictAddressFamilies")
    return {
        "uid": SANDBOX_UID if yes("DynamicUser") else 0,
        "ambient_caps": capability_names(" ".join(settings.get("AmbientCapabilities", []))),
        "bounding_caps": capability_names(" ".join(settings.get("CapabilityBoundingSet", []))),
        "no_new_privs": yes("NoNewPrivileges"),
        "protect_system": one("ProtectSystem", "no"),
        "protect_home": yes("ProtectHome"),
        "private_tmp": yes("PrivateTmp"),
        "private_devices": yes("PrivateDevices"),
        "protect_kernel_tunables": yes("ProtectKernelTunables"),
        "memory_deny_write_execute": yes("MemoryDenyWriteExecute"),
        "address_families": " ".join(families).split() if families else None,
        "syscalls": sorted(allowed_syscalls(settings.get("SystemCallFilter", []))),
        "errno": getattr(errno, one("SystemCallErrorNumber", "EPERM")),
    }


def sandboxed_exec_start(unit: Path, workdir: Path) -> list[str]:
    """The unit's ExecStart under its settings. ``workdir`` must stay visible in
    the sandbox (not under /tmp, /root or /home): the spec and stage 2 go there."""
    settings = service_settings(unit)
    (exec_start,) = settings["ExecStart"]
    spec_file = workdir / "sandbox.json"
    spec_file.write_text(json.dumps(spec(settings)))
    runner = workdir / "sandbox_exec.py"
    shutil.copy(HERE / "sandbox_exec.py", runner)
    for path in (workdir, spec_file, runner):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return ["unshare", "--mount", "--propagation", "private", SYSTEM_PYTHON, str(runner),
            str(spec_file), "--", *shlex.split(exec_start)]
