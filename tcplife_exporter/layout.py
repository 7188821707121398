"""Pack and unpack C structs whose layout comes from the BPF object's BTF.

``bpf/tcplife.h`` stays the single definition of every shared struct: a
field added or moved there is followed here without a hand-kept twin.
"""

from __future__ import annotations

import struct
from typing import Union

from .btf import Btf, Field
from .errors import TcplifeError

_INT_CODES = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
              (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}

Value = Union[int, bytes, tuple[int, ...]]


class StructLayout:
    """One struct: char arrays read as bytes, other arrays as tuples of ints."""

    def __init__(self, btf: Btf, name: str) -> None:
        self.name = name
        size, fields = btf.struct(name)
        self._fields = [f for f in fields if not f.name.startswith("_")]  # not padding
        self._struct = struct.Struct(_format(name, size, fields))
        self._names = tuple(f.name for f in self._fields)
        # (name, index among the unpacked values, length if an integer array).
        self._plan: list[tuple[str, int, int]] = []
        position = 0
        for field in self._fields:
            length = field.array_len if _is_int_array(field) else 0
            self._plan.append((field.name, position, length))
            position += length or 1
        self._has_arrays = any(length for _name, _index, length in self._plan)

    @property
    def size(self) -> int:
        return self._struct.size

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self._fields]

    def unpack(self, data: bytes, offset: int = 0) -> dict[str, Value]:
        if len(data) - offset < self.size:
            raise TcplifeError(
                f"a {self.name} of {len(data) - offset} bytes is shorter than "
                f"the {self.size} bytes its BTF describes"
            )
        flat = self._struct.unpack_from(data, offset)
        if not self._has_arrays:  # records: the hot path of tcplife
            return dict(zip(self._names, flat))
        return {name: flat[index : index + length] if length else flat[index]
                for name, index, length in self._plan}

    def pack(self, **values: Value) -> bytes:
        """The struct with the given fields set and every other one zero."""
        unknown = set(values) - set(self.field_names)
        if unknown:
            raise TcplifeError(f"struct {self.name} has no field {sorted(unknown)[0]!r}")
        flat: list[int | bytes] = []
        for field in self._fields:
            value = values.get(field.name)
            if _is_int_array(field):
                flat.extend(value if value is not None else [0] * field.array_len)
            else:
                flat.append(value if value is not None else (b"" if field.array_len else 0))
        return self._struct.pack(*flat)


def _is_int_array(field: Field) -> bool:
    return field.array_len > 0 and field.element_size > 1


def _format(name: str, size: int, fields: list[Field]) -> str:
    """A struct-module format that reads the fields at their BTF offsets."""
    parts, position = ["="], 0
    for field in fields:
        if field.offset < position:
            raise TcplifeError(f"{name} field {field.name!r} overlaps another")
        if field.offset > position:
            parts.append(f"{field.offset - position}x")
        if field.name.startswith("_"):  # padding
            parts.append(f"{field.size}x")
        elif _is_int_array(field):
            code = _INT_CODES[(field.element_size, field.signed)]
            parts.append(f"{field.array_len}{code}")
        elif field.array_len:
            parts.append(f"{field.array_len}s")
        else:
            parts.append(_INT_CODES[(field.size, field.signed)])
        position = field.offset + field.size
    if size > position:
        parts.append(f"{size - position}x")
    return "".join(parts)
