"""A small ctypes binding of libbpf.so.1: open/load/attach CO-RE objects, links and maps.

Every error names the object, program or map it is about; a failed load raises `LibbpfError` carrying the
verifier's verdict. Loading libbpf.so.1 itself, its prototypes and its log are `sensorium.bpf.clib`; reading
a verifier log is `sensorium.bpf.verifier`. Both are re-exported here: this module is the binding's API.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sensorium.bpf.clib import (
    LibbpfError,
    cstr,
    errno_now,
    lib,
    libbpf_log_tail,
    log,
    log_mark,
    num_possible_cpus,
    record_log,
)
from sensorium.bpf.verifier import VERIFIER_LIMIT, VerifierVerdict, blamed_program, stats_of, verifier_reason

__all__ = ["LibbpfError", "BpfObject", "BpfProgram", "BpfMap", "BpfLink", "lib", "libbpf_log_tail",
           "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "MapType", "num_possible_cpus", "VERIFIER_LIMIT",
           "VerifierVerdict", "verifier_reason"]

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
# ctypes shorthands of the structures below
_P = ctypes.c_void_p
_U32 = ctypes.c_uint32
_SZ = ctypes.c_size_t
_S = ctypes.c_char_p


class MapType:
    """The few ``enum bpf_map_type`` values the host looks at (uapi numbering is stable)."""

    HASH = 1
    ARRAY = 2
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    LRU_PERCPU_HASH = 10
    PERCPU_CGROUP_STORAGE = 21
    RINGBUF = 27

    PERCPU = frozenset({PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE})


# --------------------------------------------------------------------------------------------------
# BTF (just enough to find global variables in DATASECs)
# --------------------------------------------------------------------------------------------------

class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", _U32), ("info", _U32), ("size_or_type", _U32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", _U32), ("offset", _U32), ("size", _U32)]


BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


def _btf_kind(t: _BtfType) -> int:
    return int((t.info >> 24) & 0x1F)


def _btf_vlen(t: _BtfType) -> int:
    return int(t.info & 0xFFFF)


# --------------------------------------------------------------------------------------------------
# Objects, programs, maps, links
# --------------------------------------------------------------------------------------------------

class _ObjectOpenOpts(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("object_name", _S), ("relaxed_maps", ctypes.c_bool), ("pin_root_path", _S),
                ("_stub", _U32), ("kconfig", _S), ("btf_custom_path", _S), ("kernel_log_buf", _P),
                ("kernel_log_size", _SZ), ("kernel_log_level", _U32)]


class _UprobeOpts(ctypes.Structure):
    _fields_ = [("sz", _SZ), ("ref_ctr_offset", _SZ), ("bpf_cookie", ctypes.c_uint64),
                ("retprobe", ctypes.c_bool), ("func_name", _S)]


class BpfLink:
    """An attachment; `destroy` detaches it (idempotent). The owning object destroys it on close.

    A link pinned in bpffs (`pin`) stays attached while its pin exists, whatever happens to this process
    (kill -9 included): `destroy` then only drops this process's hold, except for perf-event links (tracepoint,
    kprobe, uprobe), whose detach also disables the event; `release` leaves any pinned link working."""

    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self.description = what
        self.pin_path: str | None = None

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Pin at ``path`` (in a bpffs mount; the directory must exist)."""
        if self._ptr is None:
            raise LibbpfError(_errno.EBADF, f"pin {self.description}: the link is destroyed")
        p = os.fspath(path)
        err = lib().bpf_link__pin(self._ptr, p.encode())
        if err < 0:
            raise LibbpfError(err, f"pin {self.description} at {p}")
        self.pin_path = p

    def unpin(self) -> None:
        """Remove the pin (the link stays attached while this process holds it). Idempotent."""
        if self._ptr is None or self.pin_path is None:
            return
        err = lib().bpf_link__unpin(self._ptr)
        if err < 0 and err != -_errno.ENOENT:
            raise LibbpfError(err, f"unpin {self.description} from {self.pin_path}")
        self.pin_path = None

    def release(self) -> None:
        """Drop this handle without detaching: a pinned link keeps working after this process is gone (its
        pin holds it). A link that is not pinned is destroyed as usual."""
        ptr, self._ptr = self._ptr, None
        if ptr is None:
            return
        if self.pin_path is not None:
            lib().bpf_link__disconnect(ptr)  # destroy then frees the handle without the detach step
        err = lib().bpf_link__destroy(ptr)
        if err < 0:
            log.warning("bpf_link__destroy(%s): %s", self.description, os.strerror(-err))

    @property
    def fd(self) -> int:
        if self._ptr is None:
            return -1
        return int(lib().bpf_link__fd(self._ptr))

    @property
    def alive(self) -> bool:
        return self._ptr is not None

    def destroy(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            err = lib().bpf_link__destroy(ptr)
            if err < 0:
                log.warning("bpf_link__destroy(%s): %s", self.description, os.strerror(-err))

    def __repr__(self) -> str:
        return f"<BpfLink {self.description} {'attached' if self._ptr else 'destroyed'}>"


class BpfProgram:
    """One program of a `BpfObject` (named by its C function)."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = cstr(lib().bpf_program__name(ptr))
        self.section: str = cstr(lib().bpf_program__section_name(ptr))
        # the verifier's statistics line of the last load with stats=True: insns, limit, states...
        self.stats: dict[str, int] = {}
        self._log_buf: Any = None

    def _p(self) -> int:
        self._obj._check_open()
        return self._ptr

    def _what(self) -> str:
        return f"program {self.name!r} (SEC {self.section!r}) of object {self._obj.name!r}"

    @property
    def fd(self) -> int:
        return int(lib().bpf_program__fd(self._p()))

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self._p()))

    def set_autoload(self, autoload: bool) -> None:
        err = lib().bpf_program__set_autoload(self._p(), bool(autoload))
        if err < 0:
            raise LibbpfError(err, f"set_autoload({autoload}) on {self._what()} (only before load)")

    @property
    def verified_insns(self) -> int | None:
        """Instructions the verifier processed to load this program: the kernel's own count, from
        ``bpf_prog_info.verified_insns`` (kernel 5.16+), else from the verifier's statistics line when the
        object was loaded with ``stats=True``; None when neither is known."""
        fd = self.fd
        if fd >= 0:
            buf = ctypes.create_string_buffer(_INFO_SIZE)
            size = _U32(_INFO_SIZE)
            if lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)) == 0 and \
                    size.value >= _INFO_VERIFIED_INSNS + 4:
                n = int.from_bytes(buf.raw[_INFO_VERIFIED_INSNS:_INFO_VERIFIED_INSNS + 4], "little")
                if n:
                    return n
        return self.stats.get("insns") if self.stats else None

    def _link(self, ptr: int | None, what: str) -> BpfLink:
        if not ptr:
            raise LibbpfError(errno_now(), f"cannot attach {self._what()} {what}".rstrip())
        link = BpfLink(ptr, f"{self._obj.name}:{self.name} {what}".rstrip())
        self._obj._links.append(link)
        return link

    def attach(self) -> BpfLink:
        """Attach as its SEC() says (tracepoint/..., raw_tp/..., tp_btf/..., uprobe/path:func, ...)."""
        ptr = lib().bpf_program__attach(self._p())
        return self._link(ptr, "")

    def attach_tracepoint(self, category: str, name: str) -> BpfLink:
        ptr = lib().bpf_program__attach_tracepoint(self._p(), category.encode(), name.encode())
        return self._link(ptr, f"to tracepoint {category}/{name}")

    def attach_raw_tracepoint(self, name: str) -> BpfLink:
        ptr = lib().bpf_program__attach_raw_tracepoint(self._p(), name.encode())
        return self._link(ptr, f"to raw tracepoint {name}")

    def set_attach_target(self, func: str) -> None:
        """The kernel function (fentry/fexit/fmod_ret) or LSM hook (lsm, without its ``bpf_lsm_`` prefix) this
        program attaches to, for a program whose SEC() names none: one object then serves every function
        instead of one compile per function. Before load; raises when the kernel's BTF has no such function."""
        err = lib().bpf_program__set_attach_target(self._p(), 0, func.encode())
        if err < 0:
            raise LibbpfError(err, f"set_attach_target({func!r}) on {self._what()}")

    def attach_kprobe(self, func: str, retprobe: bool = False) -> BpfLink:
        ptr = lib().bpf_program__attach_kprobe(self._p(), bool(retprobe), func.encode())
        return self._link(ptr, f"to {'kretprobe' if retprobe else 'kprobe'} {func}")

    def attach_cgroup(self, cgroup_fd: int) -> BpfLink:
        ptr = lib().bpf_program__attach_cgroup(self._p(), int(cgroup_fd))
        return self._link(ptr, f"to cgroup fd {cgroup_fd}")

    def attach_uprobe(self, binary: str | os.PathLike[str], func_name: str | None = None, offset: int = 0,
                      pid: int = -1, retprobe: bool = False, ref_ctr_offset: int = 0) -> BpfLink:
        """Attach a uprobe (or uretprobe) to ``binary`` at ``func_name`` (+``offset``) or at file
        ``offset``; ``pid=-1`` means every process. Library names are resolved by libbpf (``libc.so.6``).
        ``ref_ctr_offset``: file offset of a USDT semaphore the kernel counts while the probe is attached."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=bool(retprobe), ref_ctr_offset=int(ref_ctr_offset),
                           func_name=func_name.encode() if func_name else None)
        path = os.fspath(binary)
        ptr = lib().bpf_program__attach_uprobe_opts(self._p(), int(pid), path.encode(), int(offset),
                                                    ctypes.byref(opts))
        if func_name:
            where = f"{path}:{func_name}" + (f"+{offset:#x}" if offset else "")
        else:
            where = f"{path}:{offset:#x}"
        return self._link(ptr, f"to {'uretprobe' if retprobe else 'uprobe'} {where} pid {pid}")

    def __repr__(self) -> str:
        return f"<BpfProgram {self.name} SEC({self.section!r})>"


class BpfMap:
    """One map of a `BpfObject`. Keys and values are raw bytes of exactly the map's sizes (for per-CPU
    maps a value is ``round_up(value_size, 8) * num_possible_cpus()`` bytes, one slot per CPU)."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = cstr(lib().bpf_map__name(ptr))

    def _p(self) -> int:
        self._obj._check_open()
        return self._ptr

    def _what(self) -> str:
        return f"map {self.name!r} of object {self._obj.name!r}"

    @property
    def fd(self) -> int:
        return int(lib().bpf_map__fd(self._p()))

    @property
    def type(self) -> int:
        return int(lib().bpf_map__type(self._p()))

    @property
    def key_size(self) -> int:
        return int(lib().bpf_map__key_size(self._p()))

    @property
    def value_size(self) -> int:
        return int(lib().bpf_map__value_size(self._p()))

    @property
    def max_entries(self) -> int:
        return int(lib().bpf_map__max_entries(self._p()))

    @property
    def percpu(self) -> bool:
        return self.type in MapType.PERCPU

    def _full_value_size(self) -> int:
        vs = self.value_size
        return ((vs + 7) // 8) * 8 * num_possible_cpus() if self.percpu else vs

    def set_max_entries(self, n: int) -> None:
        err = lib().bpf_map__set_max_entries(self._p(), int(n))
        if err < 0:
            raise LibbpfError(err, f"set_max_entries({n}) on {self._what()} (only before load)")

    def reuse_fd(self, fd: int) -> None:
        """Before load: use the existing map ``fd`` (e.g. another object's ring buffer, or a pinned map)
        instead of creating this one. Its type and sizes must match."""
        err = lib().bpf_map__reuse_fd(self._p(), int(fd))
        if err < 0:
            raise LibbpfError(err, f"reuse_fd({fd}) for {self._what()}")

    def _key(self, key: bytes) -> bytes:
        key = bytes(key)
        if len(key) != self.key_size:
            raise ValueError(f"{self._what()}: key is {len(key)} bytes, the map's key_size is {self.key_size}")
        return key

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        key = self._key(key)
        value = bytes(value)
        vs = self._full_value_size()
        if len(value) != vs:
            raise ValueError(f"{self._what()}: value is {len(value)} bytes, expected {vs}")
        err = lib().bpf_map__update_elem(self._p(), key, len(key), value, len(value), flags)
        if err < 0:
            raise LibbpfError(err, f"update of {self._what()} (key {key.hex()})")

    def counters(self, names: Sequence[str]) -> dict[str, int]:
        """Read an array map of u64 counters (per-CPU or not) indexed 0..len(names)-1, summed over CPUs:
        ``{name: total}``. Missing slots count 0."""
        out: dict[str, int] = {}
        for idx, name in enumerate(names):
            raw = self.lookup(idx.to_bytes(4, "little")) or b""
            out[name] = sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw) - 7, 8))
        return out

    def lookup(self, key: bytes) -> bytes | None:
        key = self._key(key)
        vs = self._full_value_size()
        buf = ctypes.create_string_buffer(vs)
        err = lib().bpf_map__lookup_elem(self._p(), key, len(key), buf, vs, 0)
        if err == -_errno.ENOENT:
            return None
        if err < 0:
            raise LibbpfError(err, f"lookup in {self._what()} (key {key.hex()})")
        return buf.raw

    def delete(self, key: bytes) -> bool:
        key = self._key(key)
        err = lib().bpf_map__delete_elem(self._p(), key, len(key), 0)
        if err == -_errno.ENOENT:
            return False
        if err < 0:
            raise LibbpfError(err, f"delete from {self._what()} (key {key.hex()})")
        return True

    def keys(self) -> Iterator[bytes]:
        ks = self.key_size
        cur: bytes | None = None
        nxt = ctypes.create_string_buffer(ks)
        while True:
            err = lib().bpf_map__get_next_key(self._p(), cur, nxt, ks)
            if err == -_errno.ENOENT:
                return
            if err < 0:
                raise LibbpfError(err, f"iterating keys of {self._what()}")
            cur = nxt.raw
            yield cur

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:  # deleted meanwhile
                yield k, v

    def pin(self, path: str | os.PathLike[str]) -> None:
        err = lib().bpf_map__pin(self._p(), os.fspath(path).encode())
        if err < 0:
            raise LibbpfError(err, f"pin {self._what()} at {os.fspath(path)}")

    def unpin(self, path: str | os.PathLike[str]) -> None:
        err = lib().bpf_map__unpin(self._p(), os.fspath(path).encode())
        if err < 0:
            raise LibbpfError(err, f"unpin {self._what()} from {os.fspath(path)}")

    def __repr__(self) -> str:
        return f"<BpfMap {self.name} type={self.type}>"


class BpfObject:
    """A BPF ELF object opened with libbpf: programs and maps by name, load, attach, close."""

    def __init__(self, ptr: int, name: str, path: Path) -> None:
        self._ptr: int | None = ptr
        self.name = name
        self.path = path
        self.loaded = False
        self._links: list[BpfLink] = []
        L = lib()
        self.programs: dict[str, BpfProgram] = {}
        p = L.bpf_object__next_program(ptr, None)
        while p:
            prog = BpfProgram(self, p)
            self.programs[prog.name] = prog
            p = L.bpf_object__next_program(ptr, p)
        self.maps: dict[str, BpfMap] = {}
        m = L.bpf_object__next_map(ptr, None)
        while m:
            bmap = BpfMap(self, m)
            self.maps[bmap.name] = bmap
            m = L.bpf_object__next_map(ptr, m)

    @classmethod
    def open(cls, path: str | os.PathLike[str], name: str | None = None) -> BpfObject:
        """Open (not load) ``path``. ``name`` overrides the object name (used in map names and errors)."""
        path = Path(path)
        L = lib()
        opts = _ObjectOpenOpts(sz=ctypes.sizeof(_ObjectOpenOpts), object_name=name.encode() if name else None)
        mark = log_mark()
        ptr = L.bpf_object__open_file(os.fspath(path).encode(), ctypes.byref(opts))
        if not ptr:
            raise LibbpfError(errno_now(), f"cannot open BPF object {name or path.name!r} ({path})",
                              libbpf_log_tail(mark, 4096))
        return cls(ptr, name or cstr(L.bpf_object__name(ptr)), path)

    def _check_open(self) -> None:
        if self._ptr is None:
            raise LibbpfError(_errno.EBADF, f"BPF object {self.name!r} is closed")

    def program(self, name: str) -> BpfProgram:
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"object {self.name!r} has no program {name!r}; it has: "
                           f"{', '.join(sorted(self.programs)) or 'none'}") from None

    def map(self, name: str) -> BpfMap:
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"object {self.name!r} has no map {name!r}; it has: "
                           f"{', '.join(sorted(self.maps)) or 'none'}") from None

    def _global_vars(self) -> dict[str, tuple[BpfMap, int, int, str]]:
        """{variable: (internal map, offset, size, section)} from the DATASEC BTF of internal maps."""
        self._check_open()
        L = lib()
        btf = L.bpf_object__btf(self._ptr)
        if not btf:
            return {}
        found: dict[str, tuple[BpfMap, int, int, str]] = {}
        for m in self.maps.values():
            if not L.bpf_map__is_internal(m._ptr):
                continue
            tid = L.bpf_map__btf_value_type_id(m._ptr)
            tp = L.btf__type_by_id(btf, tid) if tid else None
            if not tp:
                continue
            t = _BtfType.from_address(tp)
            if _btf_kind(t) != BTF_KIND_DATASEC:
                continue
            sec = cstr(L.btf__name_by_offset(btf, t.name_off))
            infos = (_BtfVarSecinfo * _btf_vlen(t)).from_address(tp + ctypes.sizeof(_BtfType))
            for info in infos:
                vp = L.btf__type_by_id(btf, info.type)
                if not vp:
                    continue
                v = _BtfType.from_address(vp)
                if _btf_kind(v) != BTF_KIND_VAR:
                    continue
                found[cstr(L.btf__name_by_offset(btf, v.name_off))] = (m, info.offset, info.size, sec)
        return found

    def set_rodata(self, var: str, value: bytes | int) -> None:
        """Set the initial value of global ``var`` (a ``const volatile`` knob in .rodata, or a .data/.bss
        global) before load. An int is stored little/native-endian in the variable's size; bytes may be
        shorter than the variable (zero-padded, e.g. a char array)."""
        self._check_open()
        if self.loaded:
            raise LibbpfError(_errno.EBUSY, f"set_rodata({var!r}) on object {self.name!r}: already loaded")
        gv = self._global_vars()
        if var not in gv:
            raise KeyError(f"object {self.name!r} has no global variable {var!r}; it has: "
                           f"{', '.join(sorted(gv)) or 'none'}")
        m, off, size, sec = gv[var]
        if isinstance(value, bool) or isinstance(value, int):
            ival = int(value)
            try:
                data = ival.to_bytes(size, "little" if _little() else "big", signed=ival < 0)
            except OverflowError:
                raise ValueError(f"object {self.name!r}: {ival} does not fit {var!r} ({size} bytes)") from None
        else:
            data = bytes(value)
            if len(data) > size:
                raise ValueError(f"object {self.name!r}: {len(data)} bytes do not fit {var!r} ({size} bytes)")
            data = data.ljust(size, b"\0")
        psize = _SZ(0)
        base = lib().bpf_map__initial_value(m._ptr, ctypes.byref(psize))
        if not base or off + size > psize.value:
            raise LibbpfError(errno_now(_errno.EINVAL),
                              f"set_rodata({var!r}): no initial value area in {m._what()} ({sec})")
        ctypes.memmove(base + off, data, size)

    def load(self, stats: bool = False) -> None:
        """Load every autoloaded program and create the maps; on failure the error carries the
        verifier's verdict (`verifier_reason`) and names the program libbpf reported.

        ``stats``: ask the verifier for its statistics line (log level 4: its verdict and the counts, no
        trace) for every program, kept in `BpfProgram.stats`; kernels before 5.16 report the processed
        instructions only this way. A failed load then carries the verdict at that level: the verifier's
        error lines and counts, without the instructions that led there."""
        self._check_open()
        L = lib()
        autoloaded = [p for p in self.programs.values() if L.bpf_program__autoload(p._ptr)]
        if stats:
            for p in autoloaded:
                p._log_buf = ctypes.create_string_buffer(_STATS_LOG_SIZE)
                L.bpf_program__set_log_buf(p._ptr, p._log_buf, _STATS_LOG_SIZE)
                L.bpf_program__set_log_level(p._ptr, 4)
        mark = log_mark()
        err = L.bpf_object__load(self._ptr)
        if stats:
            for p in autoloaded:
                text = p._log_buf.value.decode(errors="replace") if p._log_buf is not None else ""
                counts = stats_of(text)
                if counts is not None:
                    p.stats = counts
                if err < 0 and p.stats and text.strip():
                    # the verdict at level 4: the error lines and the counts, framed like libbpf's log
                    record_log(f"libbpf: prog '{p.name}': BPF program load failed\n"
                               f"libbpf: prog '{p.name}': -- BEGIN PROG LOAD LOG --\n{text}"
                               f"-- END PROG LOAD LOG --\n")
                L.bpf_program__set_log_buf(p._ptr, None, 0)
                p._log_buf = None
        if err < 0:
            tail = libbpf_log_tail(mark)
            culprit = blamed_program(tail, self.programs)
            raise LibbpfError(err, f"cannot load BPF object {self.name!r} ({self.path})"
                              + (f": program {culprit!r} failed" if culprit else ""), tail)
        self.loaded = True

    def attach_all(self) -> list[BpfLink]:
        """Attach every autoloaded program whose SEC() libbpf can attach by itself; programs that need
        a target (cgroup, uprobe without a path, ...) are skipped. All or nothing: on an error the links
        made here are destroyed and the error is raised."""
        self._check_open()
        made: list[BpfLink] = []
        L = lib()
        try:
            for prog in self.programs.values():
                if not L.bpf_program__autoload(prog._ptr):
                    continue
                ptr = L.bpf_program__attach(prog._ptr)
                if not ptr:
                    e = errno_now()
                    if e == _errno.EOPNOTSUPP:
                        continue
                    raise LibbpfError(e, f"cannot attach {prog._what()}")
                link = BpfLink(ptr, f"{self.name}:{prog.name}")
                self._links.append(link)
                made.append(link)
        except BaseException:
            for link in made:
                link.destroy()
            raise
        return made

    @property
    def links(self) -> list[BpfLink]:
        return [lk for lk in self._links if lk.alive]

    def close(self, *, keep_pinned: bool = False) -> None:
        """Destroy this object's links, then close it (unloads programs, drops map references).

        ``keep_pinned``: links pinned in bpffs are released, not detached (`BpfLink.release`), so what they
        attach keeps working after the object and the process are gone (persistent enforcement)."""
        for link in self._links:
            if keep_pinned:
                link.release()
            else:
                link.destroy()
        self._links.clear()
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib().bpf_object__close(ptr)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten object must not keep programs attached forever; explicit close() is the norm.
        try:
            if self._ptr is not None:
                self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise; at interpreter exit libbpf may be gone
            pass

    def __repr__(self) -> str:
        return f"<BpfObject {self.name} {'closed' if self._ptr is None else 'loaded' if self.loaded else 'open'}>"


# struct bpf_prog_info (UAPI, append-only): verified_insns (5.16+) and the size that holds it.
_INFO_VERIFIED_INSNS = 216
_INFO_SIZE = 232
_STATS_LOG_SIZE = 64 * 1024


def _little() -> bool:
    return sys.byteorder == "little"

