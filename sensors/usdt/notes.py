"""USDT probes of an ELF binary: its ``.note.stapsdt`` notes (SystemTap's format, what ``<sys/sdt.h>``
writes) and their x86_64 argument specs, read as untrusted input.

Each note names a provider and a probe, the probe's address (a nop), the link-time address of
``.stapsdt.base`` (to undo prelinking), the address of its semaphore (0: none) and one argument spec per
argument: ``SIZE@OPERAND`` with SIZE 1, 2, 4 or 8 (negative: signed) and OPERAND one of ``$IMM``
(constant), ``%REG`` (register), ``OFF(%REG)`` (memory at a register plus an offset) and
``OFF(%BASE,%INDEX,SCALE)`` (memory at base + index * scale + offset). Addresses become file offsets
through the program headers: where the kernel attaches the uprobe, and where it counts the semaphore
(``ref_ctr_offset``). Every problem is an `ElfError` naming the probe and what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from pathlib import Path

from sensorium.elf import ElfError, ElfImage, open_elf

__all__ = ["UsdtArg", "UsdtProbe", "usdt_probes", "parse_arg", "REG_OFFSETS", "ARG_CONST", "ARG_REG", "ARG_DEREF",
           "ARG_SIB", "MAX_USDT_ARGS"]

ARG_CONST, ARG_REG, ARG_DEREF, ARG_SIB = 1, 2, 3, 4  # SENS_USDT_* in usdt.bpf.c
MAX_USDT_ARGS = 12        # what <sys/sdt.h> can write
MAX_NOTES = 100_000       # stapsdt notes read from one binary
MAX_NOTE_BYTES = 64 << 20  # bytes of SHT_NOTE sections read from one binary
_SHT_NOTE, _PT_LOAD, _PF_X = 7, 1, 1
_EM_X86_64 = 62

# x86_64 struct pt_regs: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss
_PT_REGS = ("r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di")
_BASE = {n: 8 * i for i, n in enumerate(_PT_REGS)}
_BASE["sp"] = 152


def _reg_names() -> dict[str, int]:
    out: dict[str, int] = {}
    for r in ("ax", "bx", "cx", "dx"):
        off = _BASE[r]
        out.update({"r" + r: off, "e" + r: off, r: off, r[0] + "l": off})
    for r in ("si", "di", "bp", "sp"):
        off = _BASE[r]
        out.update({"r" + r: off, "e" + r: off, r: off, r + "l": off})
    for n in range(8, 16):
        off = _BASE[f"r{n}"]
        out.update({f"r{n}": off, f"r{n}d": off, f"r{n}w": off, f"r{n}b": off, f"r{n}l": off})
    return out


REG_OFFSETS: dict[str, int] = _reg_names()
"""x86_64 register names -> offset of the 64-bit register in struct pt_regs (a 32/16/8-bit name is the low
part of its register: the argument's size says how much of it is the value)."""

_NUM = r"[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+)"
_REG = r"%([a-z0-9]+)"
_RE_CONST = re.compile(rf"^\$({_NUM})$")
_RE_REG = re.compile(rf"^{_REG}$")
_RE_DEREF = re.compile(rf"^({_NUM})?\({_REG}\)$")
_RE_SIB = re.compile(rf"^({_NUM})?\({_REG},{_REG}(?:,([1248]))?\)$")


@dataclasses.dataclass(frozen=True)
class UsdtArg:
    """One argument: where it is (``type``: ARG_*), its size in bytes and sign, as the spec says."""

    spec: str
    type: int
    size: int
    signed: bool
    val: int = 0       # the constant, or the memory operand's offset
    reg: int = 0       # offset in struct pt_regs of the register (base register of a memory operand)
    idx: int = 0       # SIB: offset of the index register
    scale: int = 0     # SIB: log2 of the scale


@dataclasses.dataclass(frozen=True)
class UsdtProbe:
    provider: str
    name: str
    address: int          # link-time address of the probe's nop (after the .stapsdt.base adjustment)
    offset: int           # file offset of the nop: where the uprobe attaches
    semaphore: int        # link-time address of the semaphore, 0: none
    semaphore_offset: int  # file offset of the semaphore (the uprobe's ref_ctr_offset), 0: none
    args: tuple[UsdtArg, ...]
    args_spec: str


def _int(s: str) -> int:
    # as the assembler reads it: a leading 0 is octal ("010" is 8)
    return int(s, 8) if re.match(r"^[-+]?0[0-7]+$", s) else int(s, 0)


def _reg(name: str, spec: str) -> int:
    if name in ("ah", "bh", "ch", "dh"):
        raise ElfError(f"argument '{spec}': register %{name} (bits 8-15 of a register) is not supported")
    off = REG_OFFSETS.get(name)
    if off is None:
        raise ElfError(f"argument '{spec}': unknown or unsupported register %{name}")
    return off


def parse_arg(spec: str) -> UsdtArg:
    """One x86_64 argument spec (``-4@%edi``, ``8@-16(%rbp)``, ``4@$5``, ``1@8(%rdi,%rsi,8)``)."""
    size_s, at, operand = spec.partition("@")
    if not at or not re.match(r"^-?[0-9]+$", size_s):
        raise ElfError(f"argument '{spec}': no size (SIZE@OPERAND)")
    size = int(size_s)
    signed = size < 0
    if abs(size) not in (1, 2, 4, 8):
        raise ElfError(f"argument '{spec}': size {abs(size)} (1, 2, 4 or 8 bytes)")
    size = abs(size)
    if m := _RE_CONST.match(operand):
        return UsdtArg(spec, ARG_CONST, size, signed, val=_int(m.group(1)))
    if m := _RE_REG.match(operand):
        return UsdtArg(spec, ARG_REG, size, signed, reg=_reg(m.group(1), spec))
    if m := _RE_DEREF.match(operand):
        return UsdtArg(spec, ARG_DEREF, size, signed, val=_int(m.group(1) or "0"), reg=_reg(m.group(2), spec))
    if m := _RE_SIB.match(operand):
        scale = int(m.group(4) or "1")
        return UsdtArg(spec, ARG_SIB, size, signed, val=_int(m.group(1) or "0"), reg=_reg(m.group(2), spec),
                       idx=_reg(m.group(3), spec), scale=scale.bit_length() - 1)
    raise ElfError(f"argument '{spec}': operand '{operand}' is not a constant, register or memory operand "
                   f"Sensorium can read")


def _split_args(text: str) -> list[str]:
    """The spec strings of a note's argument string (spaces inside parentheses are kept together)."""
    out: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch.isspace() and depth <= 0:
            if cur:
                out.append(cur)
            cur = ""
        elif not (ch.isspace() and depth > 0):
            cur += ch
    if cur:
        out.append(cur)
    return out


def _file_offset(elf: ElfImage, addr: int, executable: bool) -> int | None:
    for seg in elf.segments:
        if seg.type != _PT_LOAD or bool(seg.flags & _PF_X) != executable:
            continue
        if seg.vaddr <= addr < seg.vaddr + seg.filesz:
            return addr - seg.vaddr + seg.offset
    return None


def _notes(elf: ElfImage) -> list[tuple[int, int, int, bytes]]:
    """(probe address, base, semaphore, rest of the descriptor) of every stapsdt note."""
    out: list[tuple[int, int, int, bytes]] = []
    total = 0
    e = elf.endian
    asz = 8 if elf.is64 else 4
    for sec in elf.sections:
        if sec.type != _SHT_NOTE:
            continue
        total += sec.size
        if total > MAX_NOTE_BYTES:
            raise ElfError(f"note sections larger than {MAX_NOTE_BYTES} bytes")
        data = elf.read(sec.offset, sec.size, f"note section {sec.name or '?'}")
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, typ = struct.unpack_from(e + "III", data, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            end = desc_at + ((descsz + 3) & ~3)
            if end > len(data):
                raise ElfError(f"note section {sec.name or '?'}: a note runs past the section's end")
            pos = end
            if typ != 3 or data[name_at:name_at + namesz].rstrip(b"\0") != b"stapsdt":
                continue
            if len(out) >= MAX_NOTES:
                raise ElfError(f"more than {MAX_NOTES} stapsdt notes")
            if descsz < 3 * asz + 3:
                raise ElfError("a stapsdt note is too short for its addresses and names")
            pc, base, sema = struct.unpack_from(e + ("QQQ" if asz == 8 else "III"), data, desc_at)
            out.append((pc, base, sema, data[desc_at + 3 * asz:desc_at + descsz]))
    return out


def usdt_probes(path: str | Path) -> list[UsdtProbe]:
    """Every USDT probe of the binary at ``path``, in note order (one per probe site: a probe the compiler
    emitted at several places has several). Raises `ElfError` for a file that is no ELF this reader
    understands, a malformed note, or an argument spec it cannot read (naming the probe)."""
    fd, size = open_elf(path)
    try:
        elf = ElfImage(fd, size)
        notes = _notes(elf)
        base_secs = [s for s in elf.sections if s.name == ".stapsdt.base"]
        if len(base_secs) > 1:
            raise ElfError("more than one .stapsdt.base section")
        base_addr = base_secs[0].addr if base_secs else 0
        probes: list[UsdtProbe] = []
        for note_pc, note_base, sema, rest in notes:
            parts = rest.split(b"\0")
            if len(parts) < 4:  # provider, name, args, and what follows the last NUL
                raise ElfError("a stapsdt note's provider, name and arguments are not NUL-terminated")
            provider, name, args_s = (p.decode("utf-8", "replace") for p in parts[:3])
            what = f"USDT {provider}:{name}"
            pc = note_pc
            if base_addr and note_base:
                pc += base_addr - note_base  # the binary was prelinked after the note was written
            off = _file_offset(elf, pc, executable=True)
            if off is None:
                raise ElfError(f"{what}: address {pc:#x} is in no executable segment")
            sema_off = 0
            if sema:
                found = _file_offset(elf, sema, executable=False)
                if found is None:
                    raise ElfError(f"{what}: semaphore address {sema:#x} is in no writable segment of the file")
                sema_off = found
            specs = _split_args(args_s)
            if len(specs) > MAX_USDT_ARGS:
                raise ElfError(f"{what}: {len(specs)} arguments (at most {MAX_USDT_ARGS})")
            parsed: list[UsdtArg] = []
            if specs and elf.machine != _EM_X86_64:
                raise ElfError(f"{what}: argument specs are read for x86_64 binaries only (ELF machine "
                               f"{elf.machine})")
            for spec in specs:
                try:
                    parsed.append(parse_arg(spec))
                except ElfError as err:
                    raise ElfError(f"{what}: {err}") from None
            probes.append(UsdtProbe(provider, name, pc, off, sema, sema_off, tuple(parsed), args_s))
        return probes
    finally:
        os.close(fd)
