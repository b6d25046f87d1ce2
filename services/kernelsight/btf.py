"""Just enough of a BTF reader (kernel Documentation/bpf/btf.rst) to place the kernel structs a
raw-tracepoint program reads: struct member offsets, enum values and tracepoint prototypes,
from /sys/kernel/btf/vmlinux. BCC compiles against headers that may be another kernel's (the
headers fallback), so the programs that read kernel structs take their offsets from here as
-D flags (the sched and io tracers)."""

from __future__ import annotations

import struct
from typing import ClassVar

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"

# What a caller catches when the running kernel's BTF cannot place what it needs.
BTF_ERRORS = (OSError, KeyError, ValueError, IndexError, struct.error)


class Btf:
    """A parsed BTF blob: struct member offsets, enum values, function prototypes."""

    # Bytes after a type's 12-byte header, by kind: fixed (INT, ARRAY, VAR, DECL_TAG) and per
    # member (STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64).
    _EXTRA: ClassVar[dict[int, int]] = {1: 4, 3: 12, 14: 4, 17: 4}
    _PER_MEMBER: ClassVar[dict[int, int]] = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
    _MODIFIERS = (8, 9, 10, 11, 18)  # typedef volatile const restrict type_tag

    def __init__(self, data: bytes) -> None:
        magic, _v, _f, hdr, toff, tlen, soff, _sl = struct.unpack_from("<HBBIIIII", data)
        if magic != 0xEB9F:
            raise ValueError("not BTF")
        self.data, self.strs = data, hdr + soff
        self.types: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)]  # (offset, name, info, x)
        self.by_name: dict[tuple[int, str], int] = {}
        off, end = hdr + toff, hdr + toff + tlen
        while off < end:
            name, info, x = struct.unpack_from("<III", data, off)
            kind = (info >> 24) & 0x1F
            if name and kind in (4, 6, 8):  # structs, enums, typedefs are looked up by name
                self.by_name.setdefault((kind, self.name(name)), len(self.types))
            self.types.append((off, name, info, x))
            off += 12 + self._EXTRA.get(kind, 0) + self._PER_MEMBER.get(kind, 0) * (info & 0xFFFF)

    def name(self, off: int) -> str:
        end = self.data.index(b"\0", self.strs + off)
        return self.data[self.strs + off:end].decode()

    def kind(self, tid: int) -> int:
        return (self.types[tid][2] >> 24) & 0x1F

    def strip(self, tid: int) -> int:
        while tid and self.kind(tid) in self._MODIFIERS:
            tid = self.types[tid][3]
        return tid

    def type_name(self, tid: int) -> str:
        tid = self.strip(tid)
        if self.kind(tid) == 2:
            return self.type_name(self.types[tid][3]) + "*"
        return self.name(self.types[tid][1]) if tid else "void"

    def size(self, tid: int) -> int:
        tid = self.strip(tid)
        off, _n, _i, x = self.types[tid]
        if self.kind(tid) == 3:  # array: element size * count
            elem, _idx, nelems = struct.unpack_from("<III", self.data, off + 12)
            return self.size(elem) * nelems
        return 8 if self.kind(tid) == 2 else x

    def member(self, tid: int, path: str) -> tuple[int, int]:
        """(byte offset, type id) of a (dotted) member of struct type tid."""
        off = 0
        for part in path.split("."):
            tid = self.strip(tid)
            boff, _n, info, _x = self.types[tid]
            for i in range(info & 0xFFFF):
                n, mt, mo = struct.unpack_from("<III", self.data, boff + 12 + 12 * i)
                if self.name(n) == part:
                    bits = mo & 0xFFFFFF if info >> 31 else mo
                    if bits % 8:
                        raise KeyError(path)
                    off, tid = off + bits // 8, mt
                    break
            else:
                raise KeyError(path)
        return off, tid

    def enum_value(self, enum: str, member: str) -> int:
        """The value of ``member`` of ``enum <enum>`` (4-byte enums)."""
        off, _n, info, _x = self.types[self.by_name[(6, enum)]]
        for i in range(info & 0xFFFF):
            n, val = struct.unpack_from("<Ii", self.data, off + 12 + 8 * i)
            if self.name(n) == member:
                return val
        raise KeyError(f"enum {enum}.{member}")

    def field(self, struct_name: str, path: str, size: int) -> int:
        """Byte offset of ``struct <struct_name>``'s (dotted) member ``path``, which must be
        ``size`` bytes (8 for a pointer); ValueError when it is not."""
        off, tid = self.member(self.by_name[(4, struct_name)], path)
        if self.size(tid) != size:
            raise ValueError(f"{struct_name}.{path} is not {size} bytes")
        return off

    def proto_args(self, typedef: str) -> list[str]:
        """Parameter types of a function-pointer typedef (btf_trace_<tracepoint>)."""
        tid = self.by_name[(8, typedef)]
        ptr = self.strip(self.types[tid][3])
        proto = self.types[ptr][3]
        off, _n, info, _x = self.types[proto]
        return [self.type_name(struct.unpack_from("<II", self.data, off + 12 + 8 * i)[1])
                for i in range(info & 0xFFFF)]




def vmlinux(path: str = VMLINUX_BTF) -> Btf:
    """The running kernel's BTF; raises one of BTF_ERRORS when it is missing or unreadable."""
    with open(path, "rb") as f:
        return Btf(f.read())
