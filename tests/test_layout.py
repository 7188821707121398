"""StructLayout packs and unpacks the shared structs at their BTF offsets."""

from __future__ import annotations

import pytest

from tcplife_exporter.errors import TcplifeError
from tcplife_exporter.layout import StructLayout


def test_a_struct_round_trips_and_padding_is_not_a_field(btf):
    layout = StructLayout(btf, "series_key")
    values = {"comm": b"nginx", "network": 3, "port": 443, "direction": 1, "family": 6,
              "overflow": 1, "cgroup_id": 2**40 + 3}
    assert "_pad" not in layout.field_names
    packed = layout.pack(**values)
    assert len(packed) == layout.size == btf.struct("series_key")[0]
    unpacked = layout.unpack(packed)
    assert unpacked.pop("comm").rstrip(b"\0") == b"nginx"
    values.pop("comm")
    assert unpacked == values


def test_fields_land_at_their_btf_offsets(btf):
    layout = StructLayout(btf, "session_record")
    _size, fields = btf.struct("session_record")
    offsets = {f.name: f.offset for f in fields}
    packed = layout.pack(lport=0x1234, rx_bytes=2**40 + 5, family=6)
    assert packed[offsets["lport"] : offsets["lport"] + 2] == (0x1234).to_bytes(2, "little")
    assert packed[offsets["rx_bytes"] : offsets["rx_bytes"] + 8] == (2**40 + 5).to_bytes(
        8, "little")
    assert packed[offsets["family"]] == 6
    untouched = bytearray(packed)
    for name, width in (("lport", 2), ("rx_bytes", 8), ("family", 1)):
        untouched[offsets[name] : offsets[name] + width] = bytes(width)
    assert untouched == bytes(layout.size)  # every field not given is zero


def test_integer_arrays_are_tuples_and_offsets_skip_the_prefix(btf):
    layout = StructLayout(btf, "series")
    slots = len(layout.unpack(bytes(layout.size))["duration"])
    counts = tuple(range(1, slots + 1))
    packed = bytes(16) + layout.pack(duration=counts, created_ns=7)
    unpacked = layout.unpack(packed, offset=16)
    assert unpacked["duration"] == counts and unpacked["created_ns"] == 7
    assert unpacked["sent"] == (0,) * slots


def test_a_nested_struct_reads_as_its_bytes(btf):
    slot = StructLayout(btf, "open_session")
    labels = StructLayout(btf, "session_labels").pack(port=443, network=2, direction=1,
                                                      family=4, rules=9, flags=1)
    assert slot.unpack(slot.pack(labels=labels, pid=77))["labels"] == labels


def test_unknown_fields_and_short_data_are_named(btf):
    layout = StructLayout(btf, "series_key")
    with pytest.raises(TcplifeError, match="struct series_key has no field 'colour'"):
        layout.pack(colour=1)
    with pytest.raises(TcplifeError, match="shorter than"):
        layout.unpack(bytes(layout.size - 1))
