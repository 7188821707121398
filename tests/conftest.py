"""Fixtures that run the real ``tcplife`` command against real TCP traffic."""

from __future__ import annotations

import os

import pytest

from .tracing import TcplifeProcess


def pytest_sessionstart(session: pytest.ClosedSession) -> None:
    # These tests load BPF programs: a run without root would test nothing.
    if os.geteuid() != 0:
        pytest.exit("the test suite loads BPF programs and must run as root", returncode=1)


@pytest.fixture(scope="module")
def tcplife():
    """One `tcplife --json` for the module, reporting every session on the host."""
    with TcplifeProcess(["--json"]) as proc:
        yield proc
