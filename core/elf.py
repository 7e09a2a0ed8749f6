"""An ELF binary read as untrusted input: its function symbols (``.symtab``/``.dynsym``), and the headers,
sections and segments other readers need (`ElfImage`: the USDT note reader, sensorium_sensors.usdt.notes).

The uprobe sensor checks a policy's symbols here *before* attaching anything, so a typo is refused with
its name instead of a libbpf errno. The file is untrusted input read as root: every offset and size
is bounds-checked against the file, and the amount read is capped.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
from pathlib import Path

__all__ = ["ElfError", "ElfImage", "Section", "Segment", "function_symbols", "function_symbols_of", "open_elf"]

MAX_ELF_BYTES = 1 << 30          # larger files are refused rather than read
MAX_SYMBOLS = 4_000_000          # entries across both tables
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


class ElfError(Exception):
    """The file is not an ELF object this reader understands (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclasses.dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int


class ElfImage:
    """An open ELF file: its header, section and program headers, and bounded reads (`read`).

    Read with pread, piece by piece: only what a caller asks for, never the whole file (and not mmap: a
    file truncated under us would SIGBUS the agent)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        if size < 64:
            raise ElfError("not an ELF file")
        hdr = self.read(0, 64, "ELF header")
        if hdr[:4] != b"\x7fELF":
            raise ElfError("not an ELF file")
        cls, endian = hdr[4], hdr[5]
        if cls not in (1, 2) or endian not in (1, 2):
            raise ElfError("unknown ELF class or byte order")
        self.endian = "<" if endian == 1 else ">"
        self.is64 = cls == 2
        e = self.endian
        if self.is64:
            self.machine, = struct.unpack_from(e + "H", hdr, 0x12)
            phoff, shoff = struct.unpack_from(e + "QQ", hdr, 0x20)
            phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", hdr, 0x36)
        else:
            self.machine, = struct.unpack_from(e + "H", hdr, 0x12)
            phoff, shoff = struct.unpack_from(e + "II", hdr, 0x1C)
            phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", hdr, 0x2A)
        self.sections = self._sections(shoff, shentsize, shnum, shstrndx)
        self.segments = self._segments(phoff, phentsize, phnum)

    def read(self, off: int, n: int, what: str) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise ElfError(f"{what} out of bounds")
        data = os.pread(self.fd, n, off)
        if len(data) != n:
            raise ElfError(f"{what}: file changed while being read")
        return data

    def _sections(self, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> list[Section]:
        sh_fmt = self.endian + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")
        if shoff == 0 or shnum == 0:
            return []
        if shentsize < struct.calcsize(sh_fmt):
            raise ElfError("section headers out of bounds")
        raw = self.read(shoff, shnum * shentsize, "section headers")
        rows = [struct.unpack_from(sh_fmt, raw, i * shentsize) for i in range(shnum)]
        names = b""
        if 0 < shstrndx < shnum and rows[shstrndx][1] != 8:  # SHT_NOBITS has no bytes in the file
            names = self.read(rows[shstrndx][4], rows[shstrndx][5], "section names")
        out = []
        for name_off, typ, _flags, addr, off, size, link, _info, _align, entsize in rows:
            end = names.find(b"\0", name_off) if name_off < len(names) else -1
            name = names[name_off:end].decode("utf-8", "replace") if end >= 0 else ""
            out.append(Section(name, typ, addr, off, size, link, entsize))
        return out

    def _segments(self, phoff: int, phentsize: int, phnum: int) -> list[Segment]:
        if phoff == 0 or phnum == 0:
            return []
        fmt = self.endian + ("IIQQQQQQ" if self.is64 else "IIIIIIII")
        if phentsize < struct.calcsize(fmt):
            raise ElfError("program headers out of bounds")
        raw = self.read(phoff, phnum * phentsize, "program headers")
        out = []
        for i in range(phnum):
            f = struct.unpack_from(fmt, raw, i * phentsize)
            if self.is64:
                typ, flags, off, vaddr, _paddr, filesz, memsz, _align = f
            else:
                typ, off, vaddr, _paddr, filesz, memsz, flags, _align = f
            out.append(Segment(typ, flags, off, vaddr, filesz, memsz))
        return out


def open_elf(path: str | Path) -> tuple[int, int]:
    """Open ``path`` for `ElfImage`: (fd, size). The caller closes the fd. O_NONBLOCK: a path swapped for
    a FIFO after the caller's check must not hang the agent."""
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ElfError("not a regular file")
        if st.st_size > MAX_ELF_BYTES:
            raise ElfError(f"{st.st_size} bytes: larger than the {MAX_ELF_BYTES} bytes this reader accepts")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def function_symbols(path: str | Path) -> dict[str, int]:
    """Defined function symbols (STT_FUNC/STT_GNU_IFUNC with a section) -> their value (address).

    Versioned dynamic names are reported without their version (``foo`` for ``foo@@V1``), as libbpf
    resolves them by the plain name.
    """
    fd, size = open_elf(path)
    try:
        return _symbols(ElfImage(fd, size))
    finally:
        os.close(fd)


def function_symbols_of(elf: ElfImage) -> dict[str, int]:
    """`function_symbols` of an open `ElfImage`."""
    return _symbols(elf)


def _symbols(elf: ElfImage) -> dict[str, int]:
    if not elf.sections:
        raise ElfError("no section headers")
    out: dict[str, int] = {}
    total = 0
    e, is64 = elf.endian, elf.is64
    sym_fmt = e + ("IBBHQQ" if is64 else "IIIBBH")
    sym_size = struct.calcsize(sym_fmt)
    sections = elf.sections
    for sh in sections:
        if sh.type not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        if sh.link >= len(sections) or sh.entsize < sym_size:
            raise ElfError("symbol table out of bounds")
        n = sh.size // sh.entsize
        total += n
        if total > MAX_SYMBOLS:
            raise ElfError(f"more than {MAX_SYMBOLS} symbols")
        table = elf.read(sh.offset, n * sh.entsize, "symbol table")
        strtab = elf.read(sections[sh.link].offset, sections[sh.link].size, "string table")
        str_size = len(strtab)
        for i in range(n):
            fields = struct.unpack_from(sym_fmt, table, i * sh.entsize)
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
