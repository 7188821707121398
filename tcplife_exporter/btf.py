"""Read the shared types (record layout, enums, config globals) from BTF.

The compiled BPF object carries BTF for its own types, so user space derives
layouts and enum values from it instead of keeping a hand-copied twin of the
C header that could drift.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from . import libbpf
from .errors import TcplifeError

# BTF kinds (include/uapi/linux/btf.h).
KIND_INT, KIND_ARRAY, KIND_STRUCT, KIND_ENUM, KIND_DATASEC = 1, 3, 4, 6, 15
_MODIFIER_KINDS = {8, 9, 10, 11, 18}  # typedef, volatile, const, restrict, type_tag


_U32 = ctypes.c_uint32


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", _U32), ("info", _U32), ("size", _U32)]


class _Member(ctypes.Structure):
    _fields_ = [("name_off", _U32), ("type", _U32), ("offset", _U32)]


class _EnumValue(ctypes.Structure):
    _fields_ = [("name_off", _U32), ("val", ctypes.c_int32)]


class _Array(ctypes.Structure):
    _fields_ = [("type", _U32), ("index_type", _U32), ("nelems", _U32)]


class _VarSecinfo(ctypes.Structure):
    _fields_ = [("type", _U32), ("offset", _U32), ("size", _U32)]


_INT_SIGNED = 1


@dataclass(frozen=True)
class Field:
    """One member of a struct: where it is and how to read it."""

    name: str
    offset: int  # bytes
    size: int  # bytes
    signed: bool = False
    array_len: int = 0  # 0: a scalar; else an array of that many elements
    element_size: int = 0  # of an array's integer elements


@dataclass(frozen=True)
class Variable:
    """A global in a data section such as .rodata."""

    name: str
    offset: int
    size: int


class Btf:
    """Queries over one ``struct btf *`` owned by a BPF object."""

    def __init__(self, ptr: int) -> None:
        if not ptr:
            raise TcplifeError("the BPF object carries no BTF: rebuild it with clang -g")
        self._ptr = ptr
        self._lib = libbpf.lib()

    def _type(self, type_id: int) -> _BtfType:
        address = self._lib.btf__type_by_id(self._ptr, type_id)
        if not address:
            raise TcplifeError(f"BTF type id {type_id} not found in the BPF object")
        return _BtfType.from_address(address)

    def _name(self, offset: int) -> str:
        return (self._lib.btf__name_by_offset(self._ptr, offset) or b"").decode()

    def _items(self, type_id: int, item: type[ctypes.Structure]) -> list:
        btf_type = self._type(type_id)
        first = ctypes.addressof(btf_type) + ctypes.sizeof(_BtfType)
        vlen = btf_type.info & 0xFFFF
        return [item.from_address(first + i * ctypes.sizeof(item)) for i in range(vlen)]

    def _find(self, name: str, kind: int) -> int:
        type_id = self._lib.btf__find_by_name_kind(self._ptr, name.encode(), kind)
        if type_id < 0:
            raise TcplifeError(f"type {name!r} is missing from the BPF object's BTF")
        return type_id

    def _resolve(self, type_id: int) -> tuple[int, _BtfType]:
        """Skip typedefs and qualifiers."""
        while (self._type(type_id).info >> 24) & 0x1F in _MODIFIER_KINDS:
            type_id = self._type(type_id).size
        return type_id, self._type(type_id)

    def _field(self, member: _Member) -> Field:
        name = self._name(member.name_off)
        type_id, btf_type = self._resolve(member.type)
        kind = (btf_type.info >> 24) & 0x1F
        offset = member.offset // 8
        if kind in (KIND_INT, KIND_ENUM):
            signed = kind == KIND_INT and bool(self._int_encoding(type_id) & _INT_SIGNED)
            return Field(name, offset, btf_type.size, signed)
        if kind == KIND_ARRAY:
            array = _Array.from_address(ctypes.addressof(btf_type) + ctypes.sizeof(_BtfType))
            element_id, element = self._resolve(array.type)
            if (element.info >> 24) & 0x1F != KIND_INT:
                raise TcplifeError(f"field {name!r}: only arrays of integers are supported")
            signed = bool(self._int_encoding(element_id) & _INT_SIGNED)
            return Field(name, offset, array.nelems * element.size, signed,
                         array_len=array.nelems, element_size=element.size)
        if kind == KIND_STRUCT:  # read as its raw bytes, like a char array
            return Field(name, offset, btf_type.size, array_len=btf_type.size, element_size=1)
        raise TcplifeError(f"field {name!r} has a BTF kind ({kind}) this reader does not decode")

    def _int_encoding(self, type_id: int) -> int:
        address = ctypes.addressof(self._type(type_id)) + ctypes.sizeof(_BtfType)
        return (_U32.from_address(address).value >> 24) & 0x0F

    def struct(self, name: str) -> tuple[int, list[Field]]:
        """The size of ``struct name`` and its fields in offset order.

        Bitfields are left out: they are not read, and their bytes are skipped.
        """
        type_id = self._find(name, KIND_STRUCT)
        members = self._items(type_id, _Member)
        if self._type(type_id).info >> 31:  # kind_flag: offsets carry bitfield sizes
            members = [m for m in members if not m.offset >> 24]
        members = [self._field(m) for m in members]
        return self._type(type_id).size, sorted(members, key=lambda f: f.offset)

    def enum(self, name: str) -> dict[str, int]:
        """The values of ``enum name`` by enumerator name."""
        type_id = self._find(name, KIND_ENUM)
        return {self._name(v.name_off): v.val for v in self._items(type_id, _EnumValue)}

    def enum_labels(self, name: str, prefix: str) -> dict[int, str]:
        """Enumerator names by value, prefix dropped, lower case: DIRECTION_INBOUND -> inbound."""
        return {value: enumerator.removeprefix(prefix).lower()
                for enumerator, value in self.enum(name).items()}

    def section_variables(self, section: str) -> dict[str, Variable]:
        """The globals of a data section (after libbpf fixed their offsets at open)."""
        variables = {}
        for info in self._items(self._find(section, KIND_DATASEC), _VarSecinfo):
            name = self._name(self._type(info.type).name_off)
            variables[name] = Variable(name, info.offset, info.size)
        return variables
