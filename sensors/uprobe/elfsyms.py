"""Function symbols of an ELF binary, read from its ``.symtab`` and ``.dynsym`` (no dependency).

The uprobe sensor checks a policy's symbols here *before* attaching anything, so a typo is refused with
its name instead of a libbpf errno. The file is untrusted input read as root: every offset and size
is bounds-checked against the file, and the amount read is capped.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["ElfError", "function_symbols"]

MAX_ELF_BYTES = 1 << 30          # larger files are refused rather than read
MAX_SYMBOLS = 4_000_000          # entries across both tables
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


class ElfError(Exception):
    """The file is not an ELF object this reader understands (the message says why)."""


def function_symbols(path: str | Path) -> dict[str, int]:
    """Defined function symbols (STT_FUNC/STT_GNU_IFUNC with a section) -> their value (address).

    Versioned dynamic names are reported without their version (``foo`` for ``foo@@V1``), as libbpf
    resolves them by the plain name.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_ELF_BYTES:
        raise ElfError(f"{size} bytes: larger than the {MAX_ELF_BYTES} bytes this reader accepts")
    with open(p, "rb") as f:
        data = f.read()
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    cls, endian = data[4], data[5]
    if cls not in (1, 2) or endian not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    e = "<" if endian == 1 else ">"
    is64 = cls == 2
    if is64:
        shoff, = struct.unpack_from(e + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(e + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x2E)
    sh_fmt = e + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    if shoff == 0 or shnum == 0:
        raise ElfError("no section headers")
    if shentsize < struct.calcsize(sh_fmt) or shoff + shnum * shentsize > len(data):
        raise ElfError("section headers out of bounds")
    sections = [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    out: dict[str, int] = {}
    total = 0
    sym_fmt = e + ("IBBHQQ" if is64 else "IIIBBH")
    sym_size = struct.calcsize(sym_fmt)
    for sh in sections:
        _name, sh_type, _flags, _addr, off, sz, link, _info, _align, entsize = sh
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        if link >= len(sections) or entsize < sym_size or off + sz > len(data):
            raise ElfError("symbol table out of bounds")
        str_off, str_size = sections[link][4], sections[link][5]
        if str_off + str_size > len(data):
            raise ElfError("string table out of bounds")
        n = sz // entsize
        total += n
        if total > MAX_SYMBOLS:
            raise ElfError(f"more than {MAX_SYMBOLS} symbols")
        for i in range(n):
            fields = struct.unpack_from(sym_fmt, data, off + i * entsize)
            if is64:
                st_name, st_info, _other, shndx, value, _size = fields
            else:
                st_name, value, _size, st_info, _other, shndx = fields
            if st_info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == 0 or st_name >= str_size:
                continue
            end = data.find(b"\0", str_off + st_name, str_off + str_size)
            if end < 0:
                continue
            name = data[str_off + st_name:end].decode("utf-8", "replace").split("@", 1)[0]
            if name:
                out.setdefault(name, value)
    return out
