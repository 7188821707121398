"""Runs a command the way systemd would run a unit's ExecStart (tests only:
systemd does not run on these machines). Standalone: run by the distribution's
python3, which has python3-seccomp.

Stage 1, as root in a mount namespace of its own (`unshare --mount`): the
unit's view of the file system; then setpriv to the unit's user, capabilities
and no_new_privs, which runs stage 2.
Stage 2, as that user: the unit's system-call filter, address families and
W^X memory as seccomp rules (as systemd 252 applies them), then the command.

    unshare --mount --propagation private python3 sandbox_exec.py SPEC -- COMMAND...

SPEC is a JSON file written by tests/helpers/systemd_sandbox.py.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo]


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def read_only(path: str) -> None:
    if path not in mount_points():
        mount("--bind", path, path)
    mount("-o", "remount,bind,ro", path)


def private_devices() -> None:
    """A /dev with only the pseudo-devices, built aside and moved over the real one."""
    mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/mnt")
    for name in DEVICES:
        open(f"/mnt/{name}", "w").close()
        mount("--bind", f"/dev/{name}", f"/mnt/{name}")
    os.mkdir("/mnt/shm")
    os.symlink("/proc/self/fd", "/mnt/fd")
    mount("--move", "/mnt", "/dev")


def file_system(spec: dict) -> None:
    if spec["private_devices"]:
        private_devices()
    if spec["private_tmp"]:
        for path in ("/tmp", "/var/tmp"):
            mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", path)
    if spec["protect_home"]:
        for path in ("/home", "/root", "/run/user"):
            if os.path.isdir(path):
                mount("-t", "tmpfs", "-o", "ro,mode=000", "tmpfs", path)
    writable = ["/dev", "/proc", "/sys", "/tmp", "/var/tmp"]
    if spec["protect_system"] == "strict":
        for path in mount_points():
            if not any(under(path, top) for top in writable):
                read_only(path)
    if spec["protect_kernel_tunables"]:
        read_only("/proc/sys")
        for path in mount_points():
            if under(path, "/sys"):
                read_only(path)


def stage1(spec_path: str, command: list[str]) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    file_system(spec)
    caps = ",".join(f"+{c}" for c in spec["ambient_caps"])
    bounding = ",".join(f"+{c}" for c in spec["bounding_caps"])
    setpriv = ["setpriv", f"--reuid={spec['uid']}", f"--regid={spec['uid']}", "--clear-groups",
               f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
               f"--bounding-set=-all,{bounding}"]
    if spec["no_new_privs"]:
        setpriv.append("--no-new-privs")
    stage2 = [sys.executable, os.path.abspath(__file__), "--seccomp", spec_path, "--", *command]
    os.execvp("setpriv", [*setpriv, "--", *stage2])


def stage2(spec_path: str, command: list[str]) -> None:
    import seccomp  # python3-seccomp: only in the distribution's python3

    with open(spec_path) as f:
        spec = json.load(f)
    rules = seccomp.SyscallFilter(seccomp.ERRNO(spec["errno"]))
    conditional = set()
    if spec["memory_deny_write_execute"]:
        # As systemd: no mapping both writable and executable, no later exec.
        for prot in (0, PROT_WRITE, PROT_EXEC):
            rules.add_rule(seccomp.ALLOW, "mmap",
                           seccomp.Arg(2, seccomp.MASKED_EQ, PROT_WRITE | PROT_EXEC, prot))
        for call in ("mprotect", "pkey_mprotect"):
            rules.add_rule(seccomp.ALLOW, call, seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, 0))
        rules.add_rule(seccomp.ALLOW, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, 0))
        conditional |= {"mmap", "mprotect", "pkey_mprotect", "shmat"}
    if spec["address_families"] is not None:
        for family in spec["address_families"]:
            rules.add_rule(seccomp.ALLOW, "socket",
                           seccomp.Arg(0, seccomp.EQ, getattr(socket, family)))
        conditional.add("socket")
    for call in spec["syscalls"]:
        if call in conditional:
            continue
        with contextlib.suppress(RuntimeError, ValueError):  # not on this architecture
            rules.add_rule(seccomp.ALLOW, call)
    rules.load()
    os.execv(command[0], command)


if __name__ == "__main__":
    split = sys.argv.index("--")
    options, command = sys.argv[1:split], sys.argv[split + 1 :]
    if options[0] == "--seccomp":
        stage2(options[1], command)
    else:
        stage1(options[0], command)
