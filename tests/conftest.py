"""Test layers and shared fixtures.

Tests that load BPF programs carry the ``bpf`` marker and need root; the
others (configuration, layouts, exposition, formats, metric building,
deployment files) run without privileges in seconds: ``pytest -m "not bpf"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tcplife_exporter.btf import Btf
from tcplife_exporter.cgroup import hierarchy_root
from tcplife_exporter.libbpf import BpfObject
from tcplife_exporter.program import bpf_object_path

from .helpers.tracing import TcplifeProcess


def privileged() -> bool:
    """Root with capabilities: `make test`'s first layer runs as root with none."""
    with open("/proc/self/status") as status:
        effective = next(line for line in status if line.startswith("CapEff:"))
    return os.geteuid() == 0 and int(effective.split()[1], 16) != 0


if not privileged():
    # Another user may not write hypothesis' example database into the checkout.
    settings.register_profile("unprivileged", database=None)
    settings.load_profile("unprivileged")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bpf: loads BPF programs into the kernel, or needs root otherwise")


@pytest.hookimpl(trylast=True)  # after -m has deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A kernel test without root would test nothing: refuse rather than skip.
    if not privileged() and any(item.get_closest_marker("bpf") for item in items):
        pytest.exit('these tests load BPF programs and must run as root (or select the '
                    'others with -m "not bpf")', returncode=1)


@pytest.fixture(scope="session")
def btf() -> Iterator[Btf]:
    """The compiled program's BTF: opened, not loaded (no root needed)."""
    obj = BpfObject(bpf_object_path())
    yield Btf(obj.btf_ptr)
    obj.close()


@pytest.fixture(scope="module")
def tcplife():
    """One `tcplife --json` for the module, reporting every session on the host."""
    with TcplifeProcess(["--json"]) as proc:
        yield proc


@pytest.fixture
def cgroups():
    """make(name) creates a cgroup for this test below the hierarchy's root and
    gives its directory; all are removed at the end (their processes have exited)."""
    top = Path(hierarchy_root()) / f"tcplife-test-{uuid.uuid4().hex[:8]}"
    top.mkdir()

    def make(name: str) -> Path:
        directory = top / name
        directory.mkdir(parents=True)
        return directory

    yield make
    for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir():
            directory.rmdir()
    top.rmdir()
