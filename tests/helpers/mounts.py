"""Running a command where the file system looks different: a private mount
namespace, set up by a shell command first."""

from __future__ import annotations

# Every libbpf.so.1 the dynamic linker knows of becomes /dev/null (loading it fails).
HIDE_SYSTEM_LIBBPF = ("for lib in $(ldconfig -p | awk '/libbpf.so.1 /{print $NF}'); do "
                      "mount --bind /dev/null $(readlink -f $lib); done")


def in_mount_namespace(setup: str) -> list[str]:
    """A command prefix: run in a private mount namespace after `setup` (a shell command)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{setup} && exec "$@"', "sh"]
