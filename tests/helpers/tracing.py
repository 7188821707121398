"""Run the project's commands as a user would and collect what they print."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TCPLIFE = (sys.executable, "-m", "tcplife_exporter.tcplife_cli")
REPO = Path(__file__).resolve().parents[2]


class ToolProcess:
    """A running command whose output lines are collected as they come.

    Entering waits until ``ready_text`` appears on its stderr.
    """

    ready_text = ""
    command: tuple[str, ...] = ()

    def __init__(self, args: list[str], prefix: list[str] = (),
                 command: Sequence[str] | None = None, cwd: str | Path = REPO) -> None:
        # prefix: e.g. setpriv to drop privileges
        self.argv = [*prefix, *(command or self.command), *args]
        self.cwd = cwd
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.returncode: int | None = None
        self._cond = threading.Condition()

    def __enter__(self) -> ToolProcess:
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, text=True, errors="replace",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.lines), (self.proc.stderr, self.errors))
        ]
        for reader in self._readers:
            reader.start()
        self._wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.errors)

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        self.returncode = self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=10)
        return self.returncode

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.ready_text not in self.stderr:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                for reader in self._readers:
                    reader.join(timeout=2)
                raise AssertionError(
                    f"{self.argv} did not start ({self.proc.poll()}): {self.stderr}")
            with self._cond:
                self._cond.wait(0.05)



class TcplifeProcess(ToolProcess):
    """A running ``tcplife``; with --json, its sessions as dicts."""

    ready_text = "Tracing TCP sessions"
    command = TCPLIFE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: list[dict] = []
        self._lines_parsed = 0

    def sessions(self) -> list[dict]:
        # Only the lines not parsed yet: wait_for() calls this at every line that
        # arrives, and re-parsing all of them made waiting for thousands of
        # sessions quadratic, slower than tcplife itself under emulation.
        with self._cond:
            new = self.lines[self._lines_parsed:]
            self._sessions.extend(json.loads(line) for line in new if line.startswith("{"))
            self._lines_parsed += len(new)
            return list(self._sessions)

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 10) -> list[dict]:
        """Sessions so far, once ``predicate`` holds for them (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.sessions()
            if predicate(found) or time.monotonic() > deadline:
                return found
            with self._cond:
                self._cond.wait(0.05)

    def matching(self, lport: int, rport: int, count: int = 1, timeout: float = 10) -> list[dict]:
        """The sessions with these ports, waiting until ``count`` have arrived."""

        def pick(found: list[dict]) -> list[dict]:
            return [s for s in found if s["lport"] == lport and s["rport"] == rport]

        return pick(self.wait_for(lambda found: len(pick(found)) >= count, timeout))
