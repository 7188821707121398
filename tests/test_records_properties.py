"""Whatever bytes arrive as a session record, decoding gives a ClosedSession or the
project's own error, and every output format renders the ClosedSession as one line."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tcplife_exporter.cgroup_paths import CgroupPaths
from tcplife_exporter.errors import TcplifeError
from tcplife_exporter.formats import Formatter, OutputStyle
from tcplife_exporter.layout import StructLayout
from tcplife_exporter.records import RecordDecoder

# Mostly the two that decode, so that the formatters see many records.
FAMILIES = st.sampled_from([4, 6]) | st.integers(0, 255)
STYLES = [OutputStyle(), OutputStyle(wide=True), OutputStyle(csv=True, timestamp=True),
          OutputStyle(clock_time=True), OutputStyle(json=True), OutputStyle(cgroup=True),
          OutputStyle(wide=True, csv=True, cgroup=True)]


@pytest.fixture(scope="module")
def hierarchy(tmp_path_factory):
    """A stand-in hierarchy whose directory names hold what a line must not."""
    root = tmp_path_factory.mktemp("cgroup2")
    hostile = root / "a\nb\x1b[31m\\ \"x\""
    hostile.mkdir()
    return root, [root.stat().st_ino, hostile.stat().st_ino]


@pytest.fixture(scope="module")
def cgroups(hierarchy) -> CgroupPaths:
    return CgroupPaths(str(hierarchy[0]))


def renders_or_refuses(decoder: RecordDecoder, data: bytes) -> None:
    try:
        session = decoder.decode(data)
    except TcplifeError as err:
        assert "\n" not in str(err)
        return
    for style in STYLES:
        line = Formatter(style).line(session)
        assert "\n" not in line and "\r" not in line, line
    json.loads(Formatter(OutputStyle(json=True)).line(session))


def test_arbitrary_bytes(btf, cgroups):
    """Any length; and records of the right size, mostly with a family that decodes."""
    decoder = RecordDecoder(btf, cgroups)
    _size, fields = btf.struct("session_record")
    family_at = next(f.offset for f in fields if f.name == "family")

    def with_family(data: bytes, family: int) -> bytes:
        return data[:family_at] + bytes([family]) + data[family_at + 1:]

    records = st.builds(with_family, st.binary(min_size=decoder.size, max_size=decoder.size),
                        FAMILIES)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2 * decoder.size) | records)
    def check(data: bytes) -> None:
        renders_or_refuses(decoder, data)

    check()


def test_records_with_any_field_values(btf, cgroups, hierarchy):
    """Every field at any value its type holds: comm with newlines or invalid UTF-8,
    unknown families, directions and flags, counters at their limits, cgroup ids
    of no cgroup or of one whose name holds a newline."""
    decoder = RecordDecoder(btf, cgroups)
    layout = StructLayout(btf, "session_record")
    _size, fields = btf.struct("session_record")
    byte_arrays = {f.name: f.array_len for f in fields if f.array_len}  # laddr, raddr, comm
    sizes = {f.name: f.size for f in fields}

    def value_of(name: str):
        if name in byte_arrays:
            return st.binary(min_size=byte_arrays[name], max_size=byte_arrays[name])
        if name == "family":
            return FAMILIES
        if name == "cgroup_id":
            return st.sampled_from(hierarchy[1]) | st.integers(0, 2 ** 64 - 1)
        return st.integers(0, 2 ** (8 * sizes[name]) - 1)

    records = st.fixed_dictionaries({name: value_of(name) for name in layout.field_names})
    hostile = {name: 4 if name == "family" else 0 for name in layout.field_names}
    hostile.update(comm=b'a\nb"\xff\\}\r' + bytes(8), laddr=bytes(16), raddr=bytes(16))

    @settings(max_examples=300, deadline=None)
    @given(records)
    @example(hostile)
    def check(fields: dict) -> None:
        renders_or_refuses(decoder, layout.pack(**fields))

    check()
