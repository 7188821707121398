"""Turn sessions into output lines: bcc tcplife's columns, its CSV, or JSON."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass

from .records import Session

UNKNOWN = "-"


@dataclass(frozen=True)
class OutputStyle:
    wide: bool = False
    csv: bool = False
    json: bool = False
    clock_time: bool = False  # -T: HH:MM:SS
    timestamp: bool = False  # -t: seconds since the first session


class Clock:
    """Converts the kernel's CLOCK_MONOTONIC stamps to wall-clock time."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def epoch_seconds(self, monotonic_ns: int) -> float:
        return (monotonic_ns + self._offset_ns) / 1e9


def _kib(count: int) -> int:
    return count // 1024


def printable(text: str) -> str:
    """Process names are chosen by any user: escape what could break a line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _csv_row(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _ms(session: Session) -> str:
    if session.duration_ns is None:
        return UNKNOWN
    return f"{session.duration_ns / 1e6:.2f}"


COLUMNS = ("PID", "COMM", "IP", "LADDR", "LPORT", "RADDR", "RPORT", "TX_KB", "RX_KB", "MS")


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
        return self._join(times, COLUMNS)

    def line(self, session: Session) -> str:
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
        widths = [8] * self.style.clock_time + [9] * self.style.timestamp
        prefix = "".join(f"{value:<{width}} " for value, width in zip(times, widths))
        return prefix + self._columns(fields)

    def _columns(self, fields: tuple[str, ...]) -> str:
        pid, comm, ip, laddr, lport, raddr, rport, tx_kb, rx_kb, ms = fields
        if self.style.wide:
            return (
                f"{pid:<7} {comm[:12]:<12} {ip:<2} {laddr:<39} {lport:<5} "
                f"{raddr:<39} {rport:<5} {tx_kb:>6} {rx_kb:>6} {ms}"
            )
        return (
            f"{pid:<5} {comm[:10]:<10} {laddr:<15} {lport:<5} "
            f"{raddr:<15} {rport:<5} {tx_kb:>5} {rx_kb:>5} {ms}"
        )

    def _json(self, session: Session) -> str:
        record = session.as_json()
        record["time"] = round(self._clock.epoch_seconds(record.pop("close_ns")), 6)
        return json.dumps(record, ensure_ascii=False)
