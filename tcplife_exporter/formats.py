"""Turn sessions into output lines: bcc tcplife's columns, its CSV, or JSON."""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from dataclasses import dataclass

from .records import ClosedSession

UNKNOWN = "-"


@dataclass(frozen=True)
class OutputStyle:
    wide: bool = False
    csv: bool = False
    json: bool = False
    clock_time: bool = False  # -T: HH:MM:SS
    timestamp: bool = False  # -t: seconds since the first session
    cgroup: bool = False  # --cgroup: a last column with the socket's cgroup path


class Clock:
    """Converts the kernel's CLOCK_MONOTONIC stamps to wall-clock time."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def epoch_seconds(self, monotonic_ns: int) -> float:
        return (monotonic_ns + self._offset_ns) / 1e9


def _kib(count: int) -> int:
    return count // 1024


@functools.lru_cache(maxsize=4096)  # few distinct process names, many sessions
def printable(text: str) -> str:
    """Process names are chosen by any user: escape what could break a line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _csv_row(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _ms(session: ClosedSession) -> str:
    if session.duration_ns is None:
        return UNKNOWN
    return f"{session.duration_ns / 1e6:.2f}"


COLUMNS = ("PID", "COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS")
# bcc's column widths; a precision truncates the process name. Fields as in COLUMNS.
_WIDE_ROW = "{0:<7} {1:<12.12} {2:<2} {3:<39} {4:<5} {5:<39} {6:<5} {7:>6} {8:>6} {9}"
_NARROW_ROW = "{0:<5} {1:<10.10} {3:<15} {4:<5} {5:<15} {6:<5} {7:>5} {8:>5} {9}"


class Formatter:
    """Header and lines for one output style."""

    def __init__(self, style: OutputStyle, clock: Clock | None = None) -> None:
        self.style = style
        self._clock = clock or Clock()
        self._first_ns: int | None = None

    def header(self) -> str | None:
        if self.style.json:
            return None
        times = ["TIME"] * self.style.clock_time + ["TIME(s)"] * self.style.timestamp
        return self._join(times, (*COLUMNS, *["CGROUP"] * self.style.cgroup))

    def line(self, session: ClosedSession) -> str:
        if self.style.json:
            return self._json(session)
        fields = (
            str(session.pid) if session.pid else UNKNOWN,
            printable(session.comm) or UNKNOWN,
            str(session.family),
            session.laddr,
            str(session.lport),
            session.raddr,
            str(session.rport),
            str(_kib(session.tx_bytes)),
            str(_kib(session.rx_bytes)),
            _ms(session),
        )
        if self.style.cgroup:
            fields = (*fields, printable(session.cgroup))
        return self._join(self._times(session.close_ns), fields)

    def _times(self, close_ns: int) -> list[str]:
        """The -T and -t values for a session, only those asked for."""
        times = []
        if self.style.clock_time:
            epoch = self._clock.epoch_seconds(close_ns)
            times.append(time.strftime("%H:%M:%S", time.localtime(epoch)))
        if self._first_ns is None:
            self._first_ns = close_ns
        if self.style.timestamp:
            times.append(f"{(close_ns - self._first_ns) / 1e9:.3f}")
        return times

    def _join(self, times: list[str], fields: tuple[str, ...]) -> str:
        if self.style.csv:
            return _csv_row([*times, *fields])
        if not times:
            return self._columns(fields)
        widths = [8] * self.style.clock_time + [9] * self.style.timestamp
        prefix = "".join(f"{value:<{width}} " for value, width in zip(times, widths))
        return prefix + self._columns(fields)

    def _columns(self, fields: tuple[str, ...]) -> str:
        row = _WIDE_ROW if self.style.wide else _NARROW_ROW
        if not self.style.cgroup:
            return row.format(*fields)
        # MS, otherwise last and unpadded as in bcc, gets a width before CGROUP: that
        # of a session of up to about 28 hours (longer ones push CGROUP right).
        ms = len(COLUMNS) - 1
        return f"{row.format(*fields[:ms], f'{fields[ms]:<11}')} {fields[ms + 1]}"

    def _json(self, session: ClosedSession) -> str:
        record = session.as_json()
        record["time"] = round(self._clock.epoch_seconds(record.pop("close_ns")), 6)
        return json.dumps(record, ensure_ascii=False)
