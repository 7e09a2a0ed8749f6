"""Function symbols of an ELF binary, read from its ``.symtab`` and ``.dynsym`` (no dependency).

The uprobe sensor checks a policy's symbols here *before* attaching anything, so a typo is refused with
its name instead of a libbpf errno. The file is untrusted input read as root: every offset and size
is bounds-checked against the file, and the amount read is capped.
"""

from __future__ import annotations

import os
import stat
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
    # Read with pread, piece by piece: only the headers and the symbol/string tables, never the whole
    # file (and not mmap: a file truncated under us would SIGBUS the agent).
    # O_NONBLOCK: a path swapped for a FIFO after the caller's check must not hang the agent.
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ElfError("not a regular file")
        if st.st_size > MAX_ELF_BYTES:
            raise ElfError(f"{st.st_size} bytes: larger than the {MAX_ELF_BYTES} bytes this reader accepts")
        return _symbols(fd, st.st_size)
    finally:
        os.close(fd)


def _read(fd: int, off: int, n: int, size: int, what: str) -> bytes:
    if off < 0 or n < 0 or off + n > size:
        raise ElfError(f"{what} out of bounds")
    data = os.pread(fd, n, off)
    if len(data) != n:
        raise ElfError(f"{what}: file changed while being read")
    return data


def _symbols(fd: int, size: int) -> dict[str, int]:
    if size < 64:
        raise ElfError("not an ELF file")
    hdr = _read(fd, 0, 64, size, "ELF header")
    if hdr[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    cls, endian = hdr[4], hdr[5]
    if cls not in (1, 2) or endian not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    e = "<" if endian == 1 else ">"
    is64 = cls == 2
    if is64:
        shoff, = struct.unpack_from(e + "Q", hdr, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", hdr, 0x3A)
    else:
        shoff, = struct.unpack_from(e + "I", hdr, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", hdr, 0x2E)
    sh_fmt = e + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
    if shoff == 0 or shnum == 0:
        raise ElfError("no section headers")
    if shentsize < struct.calcsize(sh_fmt):
        raise ElfError("section headers out of bounds")
    shdrs = _read(fd, shoff, shnum * shentsize, size, "section headers")
    sections = [struct.unpack_from(sh_fmt, shdrs, i * shentsize) for i in range(shnum)]
    out: dict[str, int] = {}
    total = 0
    sym_fmt = e + ("IBBHQQ" if is64 else "IIIBBH")
    sym_size = struct.calcsize(sym_fmt)
    for sh in sections:
        _name, sh_type, _flags, _addr, off, sz, link, _info, _align, entsize = sh
        if sh_type not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        if link >= len(sections) or entsize < sym_size:
            raise ElfError("symbol table out of bounds")
        n = sz // entsize
        total += n
        if total > MAX_SYMBOLS:
            raise ElfError(f"more than {MAX_SYMBOLS} symbols")
        table = _read(fd, off, n * entsize, size, "symbol table")
        strtab = _read(fd, sections[link][4], sections[link][5], size, "string table")
        str_size = len(strtab)
        for i in range(n):
            fields = struct.unpack_from(sym_fmt, table, i * entsize)
            if is64:
                st_name, st_info, _other, shndx, value, _size = fields
            else:
                st_name, value, _size, st_info, _other, shndx = fields
            if st_info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == 0 or st_name >= str_size:
                continue
            end = strtab.find(b"\0", st_name)
            if end < 0:
                continue
            name = strtab[st_name:end].decode("utf-8", "replace").split("@", 1)[0]
            if name:
                out.setdefault(name, value)
    return out
