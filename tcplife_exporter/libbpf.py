"""A thin ctypes binding to libbpf: only the calls this project makes.

libbpf is reached through the package's _libbpf extension where it was built:
the extension needs libbpf.so.1, which in a wheel made by `make wheel` is a
copy inside the wheel (auditwheel repair), else the system's. A checkout used
in place without building it loads the system's libbpf.so.1 directly.

libbpf's own log is captured instead of going to stderr, so that a failure
can be reported as one sentence with the relevant log lines kept for
``--verbose``/debug logging.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.machinery
import logging
import mmap
import os
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from pathlib import Path

from . import cgroup, preflight
from .errors import TcplifeError

log = logging.getLogger(__name__)

LIBBPF_NAME = "libbpf.so.1"

_LIBBPF_WARN, _LIBBPF_INFO = 0, 1
_PrintFn = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_SampleFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

# (name, result type, argument types) of every libbpf function used.
_PROTOTYPES: list[tuple[str, object, list[object]]] = [
    ("libbpf_set_print", c_void_p, [_PrintFn]),
    ("libbpf_num_possible_cpus", c_int, []),
    ("bpf_object__open_file", c_void_p, [c_char_p, c_void_p]),
    ("bpf_object__load", c_int, [c_void_p]),
    ("bpf_object__close", None, [c_void_p]),
    ("bpf_object__btf", c_void_p, [c_void_p]),
    ("bpf_object__find_map_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_object__next_map", c_void_p, [c_void_p, c_void_p]),
    ("bpf_object__find_program_by_name", c_void_p, [c_void_p, c_char_p]),
    ("bpf_map__name", c_char_p, [c_void_p]),
    ("bpf_map__fd", c_int, [c_void_p]),
    ("bpf_map__set_max_entries", c_int, [c_void_p, c_uint32]),
    ("bpf_map__set_value_size", c_int, [c_void_p, c_uint32]),
    ("bpf_map__map_flags", c_uint32, [c_void_p]),
    ("bpf_map__set_map_flags", c_int, [c_void_p, c_uint32]),
    ("bpf_map__value_size", c_uint32, [c_void_p]),
    ("bpf_map__key_size", c_uint32, [c_void_p]),
    ("bpf_map__type", c_int, [c_void_p]),
    ("bpf_program__fd", c_int, [c_void_p]),
    ("bpf_map__initial_value", c_void_p, [c_void_p, POINTER(c_size_t)]),
    ("bpf_program__attach", c_void_p, [c_void_p]),
    ("bpf_program__attach_cgroup", c_void_p, [c_void_p, c_int]),
    ("bpf_link__destroy", c_int, [c_void_p]),
    ("bpf_link__update_program", c_int, [c_void_p, c_void_p]),
    ("bpf_map__reuse_fd", c_int, [c_void_p, c_int]),
    ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p]),
    ("bpf_map_update_elem", c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    ("bpf_map_lookup_batch", c_int,
     [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p]),
    ("bpf_obj_get_info_by_fd", c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    ("btf__find_by_name_kind", c_int, [c_void_p, c_char_p, c_uint32]),
    ("btf__type_by_id", c_void_p, [c_void_p, c_uint32]),
    ("btf__name_by_offset", c_char_p, [c_void_p, c_uint32]),
    ("btf__resolve_size", c_int64, [c_void_p, c_uint32]),
    ("btf__resolve_type", c_int, [c_void_p, c_uint32]),
    ("ring_buffer__new", c_void_p, [c_int, _SampleFn, c_void_p, c_void_p]),
    ("ring_buffer__poll", c_int, [c_void_p, c_int]),
    ("ring_buffer__consume", c_int, [c_void_p]),
    ("ring_buffer__free", None, [c_void_p]),
]


_VERIFIER_LOG = "-- BEGIN PROG LOAD LOG --"


class LibbpfLog:
    """libbpf's messages since the last ``clear()``, warnings and info only."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def clear(self) -> None:
        self.lines = []

    def has_verifier_log(self) -> bool:
        return any(_VERIFIER_LOG in line for line in self.lines)

    def tail(self, count: int = 5) -> str:
        """The last messages on one line; a verifier log shrinks to its verdict."""
        return "; ".join(_one_line(line) for line in self.lines[-count:])


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if _VERIFIER_LOG in message:
        body = [line for line in lines if not line.startswith(("--", "processed", "libbpf:"))]
        verdict = body[-1] if body else "no verifier output"
        return f"{lines[0]} verifier: {verdict} (the whole log: --log.level debug)"
    return " ".join(lines)


libbpf_log = LibbpfLog()
_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_libc.vsnprintf.argtypes = [c_void_p, c_size_t, c_char_p, c_void_p]
# A verifier log comes as one message, its verdict at the end, up to libbpf's
# largest log buffer (16 MiB). Anonymous pages become resident only as a
# message fills them.
_MESSAGE_BYTES = 16 << 20
_message = mmap.mmap(-1, _MESSAGE_BYTES)
_message_address = ctypes.addressof(ctypes.c_char.from_buffer(_message))


@_PrintFn
def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    length = _libc.vsnprintf(_message_address, _MESSAGE_BYTES, fmt, args)
    raw = ctypes.string_at(_message_address, max(min(length, _MESSAGE_BYTES - 1), 0))
    line = raw.decode(errors="replace").rstrip("\n")
    log.debug("%s", line)
    if level <= _LIBBPF_INFO:
        libbpf_log.lines.append(line)
    return 0


def lib() -> ctypes.CDLL:
    """libbpf, loaded and typed on first use."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def library_path() -> str:
    """The package's extension that brings libbpf, if built beside this module, else
    libbpf by name."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (here / f"_libbpf{suffix}").is_file():
            return str(here / f"_libbpf{suffix}")
    return LIBBPF_NAME


def _load() -> ctypes.CDLL:
    path = library_path()
    try:
        handle = ctypes.CDLL(path, use_errno=True)
    except OSError as err:
        if path != LIBBPF_NAME:
            raise TcplifeError(f"the package's libbpf {path} cannot be loaded: {err} "
                               "(install libbpf 1.x, or the package from a wheel made "
                               "by make wheel, which carries its own)") from None
        raise TcplifeError(
            f"{LIBBPF_NAME} was not found: install libbpf 1.x "
            "(Debian/Ubuntu: apt install libbpf1; Fedora/RHEL: dnf install libbpf), "
            "or install the package from a wheel made by make wheel, which carries its own"
        ) from None
    log.debug("libbpf: %s", path)
    for name, restype, argtypes in _PROTOTYPES:
        try:
            fn = getattr(handle, name)
        except AttributeError:
            raise TcplifeError(
                f"{path} lacks {name}(): libbpf 1.0 or newer is needed"
            ) from None
        fn.restype = restype
        fn.argtypes = argtypes
    handle.libbpf_set_print(_on_libbpf_print)
    return handle


# BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH (include/uapi/linux/bpf.h).
_PERCPU_MAP_TYPES = {5, 6, 10}
BPF_F_NO_PREALLOC = 1


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def errno_text(code: int) -> str:
    return os.strerror(abs(code)) if code else "unknown error"


def num_possible_cpus() -> int:
    count = lib().libbpf_num_possible_cpus()
    if count <= 0:
        raise TcplifeError(f"cannot count possible CPUs: {errno_text(count)}")
    return count


class RingBuffer:
    """A libbpf ring buffer whose records are handed to ``on_record`` as bytes."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: int, data: int, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        self._callback = _SampleFn(sample)  # must outlive the ring buffer
        self._ptr = lib().ring_buffer__new(map_fd, self._callback, None, None)
        if not self._ptr:
            raise TcplifeError(
                f"cannot open the ring buffer: {errno_text(ctypes.get_errno())}"
            )

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for a wake-up, then drain whatever is there.

        The BPF side wakes us only when enough data is waiting, so a poll that
        times out must still consume what arrived without a wake-up.
        """
        count = lib().ring_buffer__poll(self._ptr, timeout_ms)
        if count == 0:
            count = lib().ring_buffer__consume(self._ptr)
        if count < 0 and count != -errno.EINTR:  # a signal arrived; not an error
            raise TcplifeError(f"reading the ring buffer failed: {errno_text(count)}")
        return max(count, 0)

    def close(self) -> None:
        if self._ptr:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None


class BpfObject:
    """A BPF object file: opened, configured, loaded into the kernel, attached."""

    def __init__(self, path: str) -> None:
        self._lib = lib()
        self._links: list[int] = []
        libbpf_log.clear()
        self._ptr = self._lib.bpf_object__open_file(path.encode(), None)
        if not self._ptr:
            raise TcplifeError(
                f"cannot open BPF object {path}: {errno_text(ctypes.get_errno())}"
            )

    @property
    def btf_ptr(self) -> int:
        return self._lib.bpf_object__btf(self._ptr)

    def _live(self) -> int:
        if not self._ptr:
            raise TcplifeError("the BPF object is closed")
        return self._ptr

    def _map(self, name: str) -> int:
        found = self._lib.bpf_object__find_map_by_name(self._live(), name.encode())
        if not found:
            raise TcplifeError(f"the BPF object has no map named {name!r}")
        return found

    def internal_map_data(self, section: str) -> ctypes.Array:
        """The writable initial contents of a data section such as .rodata."""
        size = c_size_t()
        address = self._lib.bpf_map__initial_value(self._map(section), ctypes.byref(size))
        if not address:
            raise TcplifeError(f"the BPF object's {section} section cannot be written")
        return (ctypes.c_char * size.value).from_address(address)

    def set_max_entries(self, map_name: str, entries: int) -> None:
        err = self._lib.bpf_map__set_max_entries(self._map(map_name), entries)
        if err:
            raise TcplifeError(f"cannot size map {map_name} to {entries}: {errno_text(err)}")

    def set_value_size(self, map_name: str, size: int) -> None:
        err = self._lib.bpf_map__set_value_size(self._map(map_name), size)
        if err:
            raise TcplifeError(f"cannot size the values of map {map_name} to {size} bytes: "
                               f"{errno_text(err)}")

    def preallocate(self, map_name: str) -> None:
        """Before load: a hash map whose entries all exist from its creation."""
        found = self._map(map_name)
        flags = self._lib.bpf_map__map_flags(found) & ~BPF_F_NO_PREALLOC
        err = self._lib.bpf_map__set_map_flags(found, flags)
        if err:
            raise TcplifeError(f"cannot preallocate map {map_name}: {errno_text(err)}")

    def map_fd(self, map_name: str) -> int:
        fd = self._lib.bpf_map__fd(self._map(map_name))
        if fd < 0:
            raise TcplifeError(f"map {map_name} is not loaded")
        return fd

    def load(self) -> None:
        libbpf_log.clear()
        err = self._lib.bpf_object__load(self._ptr)
        if err == 0:
            return
        # EACCES is also the verifier's answer to a program it refuses: then there is a log.
        if -err in (errno.EPERM, errno.EACCES) and not libbpf_log.has_verifier_log():
            raise TcplifeError(
                "the kernel refused to load the BPF program (permission denied): "
                + preflight.refused_load_reason()
            )
        raise TcplifeError(
            f"the kernel rejected the BPF program ({errno_text(err)}): {libbpf_log.tail()}"
        )

    def _program(self, name: str) -> int:
        prog = self._lib.bpf_object__find_program_by_name(self._live(), name.encode())
        if not prog:
            raise TcplifeError(f"the BPF object has no program named {name!r}")
        return prog

    def attach(self, program: str) -> None:
        """Attach where the program's section names (a tracepoint, for example)."""
        libbpf_log.clear()
        link = self._lib.bpf_program__attach(self._program(program))
        self._keep_link(link, program, "")

    def attach_cgroup(self, program: str, cgroup_path: str) -> None:
        """Attach to a cgroup through a link: detached when this object closes or
        the process dies."""
        prog = self._program(program)
        cgroup_path = cgroup.resolve(cgroup_path)
        fd = cgroup.open_directory(cgroup_path)
        try:
            libbpf_log.clear()
            link = self._lib.bpf_program__attach_cgroup(prog, fd)
        finally:
            os.close(fd)
        self._keep_link(link, program, f" to the cgroup {cgroup_path}")

    def hand_over_link(self) -> int:
        """This object's only link, no longer destroyed when this object closes."""
        if len(self._links) != 1:
            raise TcplifeError("only an object with exactly one link can hand it over")
        return self._links.pop()

    def take_over_link(self, link: int, program: str) -> None:
        """Make a link handed over by another object run ``program`` instead of its
        own, atomically: each event runs exactly one of the two programs."""
        err = self._lib.bpf_link__update_program(link, self._program(program))
        if err:
            raise TcplifeError(
                f"cannot swap in BPF program {program}: {errno_text(err)}")
        self._links.append(link)

    def reuse_map(self, map_name: str, fd: int) -> None:
        """Before load: use an existing map (another object's) instead of creating one."""
        err = self._lib.bpf_map__reuse_fd(self._map(map_name), fd)
        if err:
            raise TcplifeError(f"cannot reuse map {map_name}: {errno_text(err)}")

    def _keep_link(self, link: int, program: str, where: str) -> None:
        if not link:
            raise TcplifeError(
                f"cannot attach BPF program {program}{where}: "
                f"{errno_text(ctypes.get_errno())} ({libbpf_log.tail(2)})"
            )
        self._links.append(link)

    def program_fd(self, program: str) -> int:
        fd = self._lib.bpf_program__fd(self._program(program))
        if fd < 0:
            raise TcplifeError(f"program {program} is not loaded")
        return fd

    def map_sizes(self, map_name: str) -> tuple[int, int]:
        """Key size and the size of one value as user space sees it (all CPUs)."""
        found = self._map(map_name)
        value_size = self._lib.bpf_map__value_size(found)
        if self._lib.bpf_map__type(found) in _PERCPU_MAP_TYPES:
            value_size = _round_up(value_size, 8) * num_possible_cpus()
        return self._lib.bpf_map__key_size(found), value_size

    def update(self, map_name: str, key: bytes, value: bytes) -> None:
        err = self._lib.bpf_map_update_elem(self.map_fd(map_name), key, value, 0)
        if err:
            raise TcplifeError(
                f"writing map {map_name} failed: {errno_text(ctypes.get_errno())}"
            )

    def read_all(self, map_name: str, batch_bytes: int = 256 << 10) -> list[tuple[bytes, bytes]]:
        """Every entry of a hash map, read in batches of about ``batch_bytes``:
        (key, value) pairs.

        Per-CPU values come as one value per possible CPU, each padded to 8 bytes.
        """
        fd = self.map_fd(map_name)
        key_size, value_size = self.map_sizes(map_name)
        chunk = max(batch_bytes // (key_size + value_size), 16)
        token_in = ctypes.create_string_buffer(max(key_size, 8))
        token_out = ctypes.create_string_buffer(max(key_size, 8))
        entries: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            keys = ctypes.create_string_buffer(key_size * chunk)
            values = ctypes.create_string_buffer(value_size * chunk)
            count = c_uint32(chunk)
            err = self._lib.bpf_map_lookup_batch(
                fd, None if first else token_in, token_out, keys, values,
                ctypes.byref(count), None,
            )
            code = ctypes.get_errno() if err else 0
            if code == errno.ENOSPC:  # one hash bucket holds more than `chunk` entries
                chunk *= 2
                continue
            if code not in (0, errno.ENOENT):
                raise TcplifeError(f"reading map {map_name} failed: {errno_text(code)}")
            raw_keys, raw_values = keys.raw, values.raw
            entries.extend(
                (raw_keys[i * key_size : (i + 1) * key_size],
                 raw_values[i * value_size : (i + 1) * value_size])
                for i in range(count.value)
            )
            if code == errno.ENOENT:  # that was the last batch
                return entries
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def program_info(self, program: str, size: int) -> bytes:
        """The kernel's struct bpf_prog_info for a loaded program, ``size`` bytes of it."""
        info = ctypes.create_string_buffer(size)
        length = c_uint32(size)
        err = self._lib.bpf_obj_get_info_by_fd(
            self.program_fd(program), info, ctypes.byref(length)
        )
        if err:
            raise TcplifeError(
                f"reading program {program}'s statistics failed: "
                f"{errno_text(ctypes.get_errno())}"
            )
        return info.raw

    def lookup(self, map_name: str, key: ctypes._SimpleCData, value: ctypes.Array) -> None:
        err = self._lib.bpf_map_lookup_elem(
            self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value)
        )
        if err:
            raise TcplifeError(
                f"reading map {map_name} failed: {errno_text(ctypes.get_errno())}"
            )

    def close(self) -> None:
        for link in self._links:
            self._lib.bpf_link__destroy(link)
        self._links = []
        if self._ptr:
            self._lib.bpf_object__close(self._ptr)
            self._ptr = None
