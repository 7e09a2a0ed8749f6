"""Stack traces of hook events (a Post action's ``kernelStackTrace`` / ``userStackTrace``): the ids a record
carries after its arguments (``struct sens_stack_ids``, hook/defs.h), read from the section's ``sens_stacks``
map and deleted, then symbolized into Tetragon's ``StackTraceEntry`` (address, offset, symbol, module).

Kernel addresses are named from /proc/kallsyms (module symbols with their module), read once and read again
when the loaded modules change. User addresses are named from the process's /proc/<pid>/maps and the ELF
symbols of the mapped file (`sensorium.elf`), opened through /proc/<pid>/map_files so that a file replaced
or in another mount namespace is still the one that ran; symbol tables are cached per file identity (device,
inode, size, mtime). What could not be delivered is counted by reason (`LOST_REASONS`) in the section's status.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from typing import Any

from sensorium.bpf.clib import lib
from sensorium.elf import ElfError, ElfImage, function_symbols_of, open_elf

__all__ = ["LOST_REASONS", "STACK_DEPTH", "IDS", "StackMap", "KernelSymbols", "UserSymbols", "stack_fields"]

STACK_DEPTH = 127  # SENS_STACK_DEPTH: frames of one stack in sens_stacks
IDS = struct.Struct("<ii")  # struct sens_stack_ids
_FRAMES = struct.Struct(f"<{STACK_DEPTH}Q")

LOST_REASONS = ("stack_map_full", "stack_collision", "stack_error", "stack_missing", "stack_process_gone")
"""Why a stack an event asked for is not in it: the kernel's stack map was full (bpf_get_stackid -ENOMEM), another
stack held its hash bucket (-EEXIST), another error of bpf_get_stackid (-EFAULT: no user stack, e.g. a kernel
thread), the id was no longer in the map when read, the process exited before its user stack was named."""


class StackMap:
    """One section's ``sens_stacks`` map, by fd (shared by the section's hook objects): frames by id, each id
    deleted after the batch that read it (`flush`). An id whose stack was deleted by an earlier batch but given
    again to a later event (the same stack: bpf_get_stackid returns the id of an identical stack) is served from
    the frames read last for it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._key = ctypes.c_uint32()
        self._buf = ctypes.create_string_buffer(_FRAMES.size)
        self._pending: set[int] = set()
        self._recent: OrderedDict[int, tuple[int, ...]] = OrderedDict()

    def frames(self, sid: int) -> tuple[int, ...] | None:
        recent = self._recent
        if sid in self._pending:
            return recent.get(sid)
        self._key.value = sid
        err = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(self._key), self._buf)
        if err < 0:
            return recent.get(sid)
        raw = _FRAMES.unpack(self._buf.raw)
        n = raw.index(0) if 0 in raw else STACK_DEPTH
        got = raw[:n]
        recent[sid] = got
        recent.move_to_end(sid)
        if len(recent) > 1024:
            recent.popitem(last=False)
        self._pending.add(sid)
        return got

    def flush(self) -> None:
        """Delete the ids read since the last flush (the kernel then stores their next stack afresh)."""
        for sid in self._pending:
            self._key.value = sid
            lib().bpf_map_delete_elem(self.fd, ctypes.byref(self._key))
        self._pending.clear()


class KernelSymbols:
    """/proc/kallsyms as a sorted table; read again when /proc/modules changes (checked at most once a second,
    and only for an address the table does not name)."""

    def __init__(self, kallsyms: str = "/proc/kallsyms", modules: str = "/proc/modules") -> None:
        self.kallsyms, self.modules = kallsyms, modules
        self._addrs: list[int] = []
        self._names: list[tuple[str, str]] = []
        self._mods = b""
        self._checked = 0.0
        self._lock = threading.Lock()
        self._loaded = False

    def _read_modules(self) -> bytes:
        try:
            with open(self.modules, "rb") as f:
                return b"\n".join(line.split(b" ", 1)[0] for line in f.read(1 << 20).splitlines())
        except OSError:
            return b""

    def _load(self) -> None:
        rows: list[tuple[int, str, str]] = []
        try:
            with open(self.kallsyms, "rb") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in b"tTwW":
                        continue
                    try:
                        addr = int(parts[0], 16)
                    except ValueError:
                        continue
                    if not addr:
                        continue  # kptr_restrict: addresses hidden, nothing to name with
                    mod = parts[3].strip(b"[]").decode("ascii", "replace") if len(parts) > 3 else ""
                    rows.append((addr, parts[2].decode("ascii", "replace"), mod))
        except OSError:
            rows = []
        rows.sort()
        self._addrs = [r[0] for r in rows]
        self._names = [(r[1], r[2]) for r in rows]
        self._mods = self._read_modules()
        self._loaded = True

    def _lookup(self, addr: int) -> tuple[str, str, int] | None:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        name, mod = self._names[i]
        off = addr - self._addrs[i]
        if off > 1 << 20:  # past the last symbol of a region: not this symbol's code
            return None
        return name, mod, off

    def name(self, addr: int) -> tuple[str, str, int] | None:
        """(symbol, module ("" for the kernel image), offset) of a kernel text address, None if unknown."""
        with self._lock:
            if not self._loaded:
                self._load()
            got = self._lookup(addr)
            now = time.monotonic()
            # a module loaded since (or unloaded): its symbols are new; the common case pays nothing
            if (got is None or got[1]) and now - self._checked > 1.0:
                self._checked = now
                if self._read_modules() != self._mods:
                    self._load()
                    got = self._lookup(addr)
            return got


def function_table(path: str) -> tuple[list[int], list[str], list[tuple[int, int, int]]]:
    """(sorted symbol addresses, their names, PT_LOAD (file offset, vaddr, file size)) of an ELF file."""
    fd, size = open_elf(path)
    try:
        elf = ElfImage(fd, size)
        syms = sorted((v, n) for n, v in function_symbols_of(elf).items() if v)
        loads = [(s.offset, s.vaddr, s.filesz) for s in elf.segments if s.type == 1]
    finally:
        os.close(fd)
    return [s[0] for s in syms], [s[1] for s in syms], loads


class UserSymbols:
    """User addresses of a process -> (symbol, module path, offset). ELF tables are cached per file identity
    (bounded); a process's maps are read once per `begin` (one batch)."""

    MAX_FILES = 64

    def __init__(self) -> None:
        self._files: OrderedDict[tuple[int, int, int, int], Any] = OrderedDict()
        self._maps: dict[int, list[tuple[int, int, int, str, str]] | None] = {}

    def begin(self) -> None:
        self._maps.clear()

    def _read_maps(self, pid: int) -> list[tuple[int, int, int, str, str]] | None:
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                text = f.read(4 << 20)
        except OSError:
            return None
        out = []
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) < 6 or b"x" not in parts[1] or not parts[5].startswith(b"/"):
                continue
            try:
                lo, hi = (int(x, 16) for x in parts[0].split(b"-"))
                pgoff = int(parts[2], 16)
            except ValueError:
                continue
            out.append((lo, hi, pgoff, parts[0].decode("ascii"), parts[5].decode("utf-8", "replace")))
        return out

    def _table(self, pid: int, rng: str, path: str) -> Any:
        mf = f"/proc/{pid}/map_files/{rng}"
        try:
            st = os.stat(mf)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        t = self._files.get(key)
        if t is None:
            try:
                t = function_table(mf)
            except (OSError, ElfError):
                t = ([], [], [])
            self._files[key] = t
            if len(self._files) > self.MAX_FILES:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(key)
        return t

    def name(self, pid: int, addr: int) -> tuple[str, str, int] | None:
        """(symbol or "", module path, offset) for ``addr``; None: the process's maps cannot be read (gone).
        Offset: into the symbol when named, else into the module file; ("", "", 0) when no file maps it."""
        maps = self._maps.get(pid, ())
        if maps == ():
            maps = self._maps[pid] = self._read_maps(pid)
        if maps is None:
            return None
        for lo, hi, pgoff, rng, path in maps:
            if lo <= addr < hi:
                file_off = addr - lo + pgoff
                t = self._table(pid, rng, path)
                if t:
                    addrs, names, loads = t
                    for off, vaddr, filesz in loads:
                        if off <= file_off < off + filesz:
                            v = file_off - off + vaddr
                            i = bisect.bisect_right(addrs, v) - 1
                            if i >= 0:
                                return names[i], path, v - addrs[i]
                            break
                return "", path, file_off
        return "", "", 0


KERNEL = KernelSymbols()


def _entry(addr: int, named: tuple[str, str, int] | None) -> dict[str, Any]:
    e: dict[str, Any] = {"address": addr}
    if named:
        sym, mod, off = named
        if off:
            e["offset"] = off
        if sym:
            e["symbol"] = sym
        if mod:
            e["module"] = mod
    return e


def stack_fields(ids: tuple[int, int], flags: int, pid: int, smap: StackMap | None, users: UserSymbols,
                 lost: MutableMapping[str, int], kflag: int, uflag: int) -> Mapping[str, Any]:
    """The ``kernel_stack_trace`` / ``user_stack_trace`` of one record (empty lists left out, as Tetragon's
    JSON leaves them), counting in ``lost`` what could not be delivered."""
    out: dict[str, Any] = {}
    for field, flag, sid in (("kernel_stack_trace", kflag, ids[0]), ("user_stack_trace", uflag, ids[1])):
        if not flags & flag:
            continue
        if sid < 0:
            why = ("stack_map_full" if sid == -errno.ENOMEM else "stack_collision" if sid == -errno.EEXIST
                   else "stack_error")
            lost[why] += 1
            continue
        frames = smap.frames(sid) if smap is not None else None
        if not frames:
            lost["stack_missing"] += 1
            continue
        if flag == kflag:
            out[field] = [_entry(a, KERNEL.name(a)) for a in frames]
        else:
            entries = []
            for a in frames:
                named = users.name(pid, a)
                if named is None:
                    break
                entries.append(_entry(a, named))
            if len(entries) < len(frames):
                lost["stack_process_gone"] += 1
                continue
            out[field] = entries
    return out
