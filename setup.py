"""Compile the BPF program while building the package, so wheels ship it, and build the
extension that carries libbpf into a repaired wheel (tcplife_exporter/_libbpf.c)."""

import subprocess

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self) -> None:
        subprocess.run(["make", "--no-print-directory", "bpf"], check=True)
        super().run()


# An extension that needs libbpf.so.1: `make wheel` (auditwheel repair) copies libbpf and
# what it needs (libelf, zlib) into the wheel and points the extension at them, so the
# wheel runs where the system has no libbpf.so.1 or an older one. (Linking libbpf.a
# in instead is not possible with Debian's archives: built as position-dependent code.)
LIBBPF = Extension(
    "tcplife_exporter._libbpf",
    sources=["tcplife_exporter/_libbpf.c"],
    define_macros=[("Py_LIMITED_API", "0x03090000")],
    py_limited_api=True,
    libraries=["bpf"],
    # The C library stays a direct dependency although the module calls none of it:
    # auditwheel tells the wheel's libc (and its manylinux tag) from it.
    extra_link_args=["-Wl,--no-as-needed"],
)

setup(cmdclass={"build_py": BuildWithBpf}, ext_modules=[LIBBPF],
      options={"bdist_wheel": {"py_limited_api": "cp39"}})
