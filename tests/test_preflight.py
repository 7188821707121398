"""A kernel older than the program needs is named when the kernel refuses it."""

from __future__ import annotations

import pytest

from tcplife_exporter import preflight
from tcplife_exporter.errors import TcplifeError
from tcplife_exporter.program import SessionProgram


@pytest.mark.parametrize(("release", "named"), [
    ("5.10.0-28-amd64", True), ("4.19.0-26-amd64", True), ("5.14.0-70.13.1.el9_0.x86_64", True),
    ("5.15.0-91-generic", False), ("6.1.0-57-rt-amd64", False), ("6.18.44-fc-v1252", False),
    ("10.2.0", False), ("unparsable", False),
])
def test_only_kernels_older_than_the_minimum_are_named(release, named):
    note = preflight.older_kernel_note(release)
    assert bool(note) == named
    if named:
        assert note == (f"; this kernel ({release}) is older than Linux 5.15, the oldest the "
                        "program runs on")


@pytest.mark.bpf
def test_a_refused_load_on_an_old_kernel_ends_with_the_minimum(monkeypatch):
    # An old kernel cannot boot here: its refusal is played by the object's load.
    program = SessionProgram(1024)
    try:
        def refused() -> None:
            raise TcplifeError("the kernel rejected the BPF program (Invalid argument): "
                               "verifier: unknown func bpf_get_current_task_btf#158")
        monkeypatch.setattr(program.obj, "load", refused)
        monkeypatch.setattr(preflight.platform, "release", lambda: "5.10.0-28-amd64")
        with pytest.raises(TcplifeError) as error:
            program.load()
    finally:
        program.close()
    assert str(error.value).endswith(
        "unknown func bpf_get_current_task_btf#158; this kernel (5.10.0-28-amd64) is older "
        "than Linux 5.15, the oldest the program runs on")
