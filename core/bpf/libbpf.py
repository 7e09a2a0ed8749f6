"""A small ctypes binding of libbpf.so.1: open/load/attach CO-RE objects, links and maps.

libbpf is loaded lazily on first use. Its log output goes through ``libbpf_set_print`` into Python
logging and into a bounded in-memory tail, so a failed load raises `LibbpfError` carrying the end of
the verifier log. Every error names the object, program or map it is about. libbpf >= 1.0 semantics
are assumed (functions return ``-errno``, pointer functions return NULL and set errno).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno as _errno
import logging
import os
import platform
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

__all__ = ["LibbpfError", "BpfObject", "BpfProgram", "BpfMap", "BpfLink", "lib", "libbpf_log_tail",
           "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "MapType", "num_possible_cpus"]

log = logging.getLogger("sensorium.bpf.libbpf")

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


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


class LibbpfError(OSError):
    """A libbpf call failed. ``errno`` is set; the message names the object/program/map and, for load
    failures, ends with the tail of the verifier log."""

    def __init__(self, err: int, message: str, log_tail: str = "") -> None:
        err = abs(err) if err else _errno.EIO
        text = f"{message}: {os.strerror(err)} (errno {err})"
        self.verifier = verifier_reason(log_tail) if log_tail else None
        if self.verifier is not None:
            text += "\n" + self.verifier.text()
        elif log_tail:
            text += "\n--- libbpf log (tail) ---\n" + "\n".join(log_tail.rstrip("\n").splitlines()[-20:])
        super().__init__(err, text)
        self.log_tail = log_tail

    def __str__(self) -> str:  # OSError's default adds "[Errno n]" in front of a text that has it
        return str(self.args[1])


VERIFIER_LIMIT = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS: processed instructions a load may take
_STATS = re.compile(r"processed (\d+) insns \(limit (\d+)\) max_states_per_insn (\d+) total_states (\d+) "
                    r"peak_states (\d+)")
# Lines of a verifier log that are its trace, not its verdict: instructions, register states, source lines,
# branch and pruning notes, and libbpf's own framing.
_TRACE = re.compile(r"^(\d+: |; |from \d+ to \d+|frame\d|last_idx|regs=|parent |propagating |mark_precise"
                    r"|Func#|Validating |func#|caller:|callee:|returning from |-- BEGIN|-- END|libbpf: |\s*$|"
                    r"arg#\d|Global function |stack depth|verification time|\d+ ?: safe|safe$|processed \d+ insns|to caller at "
                    r"\d+:|from \d+ to \d+:)")


@dataclasses.dataclass(frozen=True)
class VerifierVerdict:
    """What the kernel's verifier said when it refused a program: its own error lines, the instructions it
    processed (when it printed them) and a hint for the usual causes."""

    program: str | None
    error: str
    insns: int | None
    limit: int | None

    @property
    def too_complex(self) -> bool:
        return ("too large" in self.error or "too complex" in self.error or
                (self.insns is not None and self.limit is not None and self.insns > self.limit))

    def text(self) -> str:
        out = [f"verifier: {self.error}"]
        if self.insns is not None:
            out.append(f"verifier: processed {self.insns:,} instructions (limit {self.limit or VERIFIER_LIMIT:,})")
        if self.too_complex:
            out.append("hint: the program is over the verifier's complexity limit on this kernel; this is a "
                       "Sensorium defect (every program must verify within 20% of the limit), please report "
                       "it with `sensorium probe` output")
        elif "unknown func" in self.error or "invalid func" in self.error or "helper call" in self.error:
            out.append("hint: the kernel lacks a helper or kfunc the program uses (`sensorium probe` lists what "
                       "this kernel offers)")
        elif "Permission denied" in self.error or "EPERM" in self.error:
            out.append("hint: the kernel refuses this program type here (lockdown, or a hook it does not offer)")
        return "\n".join(out)


def verifier_reason(log: str) -> VerifierVerdict | None:
    """The verdict in a libbpf/verifier log (the tail libbpf printed on a failed load), or None when the log
    holds no verifier output (an error libbpf raised itself: its own last line is then the reason)."""
    lines = log.splitlines()
    begin = max((i for i, ln in enumerate(lines) if "-- BEGIN PROG LOAD LOG --" in ln), default=-1)
    prog = None
    m = re.findall(r"prog '([^']+)': (?:BPF program load failed|-- BEGIN|failed to load)", log)
    if m:
        prog = m[-1]
    if begin < 0:
        # A log of megabytes (a program over the complexity limit) is kept by its end only: its beginning
        # is gone, but the verdict is at the end, before libbpf's END marker.
        end_at = max((i for i, ln in enumerate(lines) if "-- END PROG LOAD LOG --" in ln), default=-1)
        if end_at < 0:
            return None
        body = lines[1:end_at]  # the first line was cut anywhere: not a line of the verifier's
    else:
        body = lines[begin + 1:]
        end = next((i for i, ln in enumerate(body) if "-- END PROG LOAD LOG --" in ln), len(body))
        body = body[:end]
    insns = limit = None
    for ln in body:
        st = _STATS.search(ln)
        if st:
            insns, limit = int(st.group(1)), int(st.group(2))
    verdict = [ln.strip() for ln in body if not _TRACE.match(ln.strip())]
    # the verdict is the last lines the verifier wrote that are not its trace (usually one or two)
    error = "; ".join(verdict[-3:]) if verdict else "(the kernel gave no reason; see the debug log)"
    return VerifierVerdict(prog, error[:500], insns, limit)


# --------------------------------------------------------------------------------------------------
# Loading libbpf and its log
# --------------------------------------------------------------------------------------------------

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LOG_LIMIT = 64 * 1024
# The size of a va_list object: on x86_64 and aarch64 it is a struct passed by address, so a byte copy
# of it is a valid va_copy. Other architectures get the format string only.
_VA_LIST_SIZE = {"x86_64": 24, "aarch64": 32}.get(platform.machine())

_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_log_lock = threading.Lock()
_log_chunks: collections.deque[str] = collections.deque()
_log_size = 0
_log_seq = 0  # number of chunks ever appended: lets a caller take what was logged since a mark


def _format_va(fmt: bytes, ap: int | None) -> str:
    if _libc is None or _VA_LIST_SIZE is None or not ap:
        return fmt.decode(errors="replace")
    copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
    ctypes.memmove(copy, ap, _VA_LIST_SIZE)
    need = _libc.vsnprintf(None, 0, fmt, ctypes.addressof(copy))
    if need < 0:
        return fmt.decode(errors="replace")
    # A verifier log is up to 16 MiB (libbpf's BPF_LOG_BUF_SIZE) and its end matters most: format it
    # whole (vsnprintf can only cut the end), the caller keeps the tail.
    size = min(need, 64 << 20) + 1
    buf = ctypes.create_string_buffer(size)
    _libc.vsnprintf(buf, size, fmt, ap)
    return buf.value.decode(errors="replace")


_LIBBPF_DEBUG = 2  # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2


def _print_cb(level: int, fmt: bytes, ap: int | None) -> int:
    global _log_size, _log_seq
    # libbpf's debug lines (thousands per object: every CO-RE relocation) say nothing an error needs; formatting
    # them was a third of an object's open time. Verifier logs and load failures come at WARN.
    if level >= _LIBBPF_DEBUG and not log.isEnabledFor(logging.DEBUG):
        return 0
    try:
        text = _format_va(fmt, ap)
    except Exception:  # never let an exception cross into C
        return 0
    if len(text) > _LOG_LIMIT:
        text = text[-_LOG_LIMIT:]
    with _log_lock:
        _log_chunks.append(text)
        _log_size += len(text)
        _log_seq += 1
        while _log_size > _LOG_LIMIT:  # drop the oldest text, cutting into a chunk when needed
            excess = _log_size - _LOG_LIMIT
            first = _log_chunks[0]
            if len(first) <= excess:
                _log_chunks.popleft()
                _log_size -= len(first)
            else:
                _log_chunks[0] = first[excess:]
                _log_size -= excess
    # libbpf's warnings include whole verifier logs; the error carries them, so keep logging quiet.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("libbpf[%d]: %s", level, text.rstrip("\n"))
    return 0


_print_cb_c = _PRINT_FN(_print_cb)


def _log_mark() -> int:
    with _log_lock:
        return _log_seq


def libbpf_log_tail(since: int | None = None, limit: int = _LOG_LIMIT) -> str:
    """The last ``limit`` characters libbpf printed (optionally only chunks after mark ``since``)."""
    with _log_lock:
        chunks = list(_log_chunks)
        if since is not None:
            newer = _log_seq - since
            chunks = chunks[-newer:] if 0 < newer <= len(chunks) else ([] if newer <= 0 else chunks)
    text = "".join(chunks)
    return text[-limit:]


_P = ctypes.c_void_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SZ = ctypes.c_size_t
_S = ctypes.c_char_p

# name: (restype, argtypes)
_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (_P, [_PRINT_FN]),
    "libbpf_major_version": (_U32, []),
    "libbpf_minor_version": (_U32, []),
    "libbpf_num_possible_cpus": (_I, []),
    "bpf_object__open_file": (_P, [_S, _P]),
    "bpf_object__load": (_I, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__name": (_S, [_P]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_object__next_program": (_P, [_P, _P]),
    "bpf_object__next_map": (_P, [_P, _P]),
    "bpf_program__name": (_S, [_P]),
    "bpf_program__section_name": (_S, [_P]),
    "bpf_program__fd": (_I, [_P]),
    "bpf_program__autoload": (ctypes.c_bool, [_P]),
    "bpf_program__set_autoload": (_I, [_P, ctypes.c_bool]),
    "bpf_program__type": (_I, [_P]),
    "bpf_program__set_log_level": (_I, [_P, _U32]),
    "bpf_program__set_log_buf": (_I, [_P, _P, _SZ]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_program__attach_tracepoint": (_P, [_P, _S, _S]),
    "bpf_program__attach_raw_tracepoint": (_P, [_P, _S]),
    "bpf_program__attach_cgroup": (_P, [_P, _I]),
    "bpf_program__attach_kprobe": (_P, [_P, ctypes.c_bool, _S]),
    "bpf_program__set_attach_target": (_I, [_P, _I, _S]),
    "bpf_program__attach_uprobe_opts": (_P, [_P, _I, _S, _SZ, _P]),
    "bpf_link__destroy": (_I, [_P]),
    "bpf_link__fd": (_I, [_P]),
    "bpf_link__pin": (_I, [_P, _S]),
    "bpf_link__unpin": (_I, [_P]),
    "bpf_link__disconnect": (None, [_P]),
    "bpf_map__name": (_S, [_P]),
    "bpf_map__fd": (_I, [_P]),
    "bpf_map__type": (_I, [_P]),
    "bpf_map__key_size": (_U32, [_P]),
    "bpf_map__value_size": (_U32, [_P]),
    "bpf_map__max_entries": (_U32, [_P]),
    "bpf_map__set_max_entries": (_I, [_P, _U32]),
    "bpf_map__reuse_fd": (_I, [_P, _I]),
    "bpf_map__is_internal": (ctypes.c_bool, [_P]),
    "bpf_map__btf_value_type_id": (_U32, [_P]),
    "bpf_map__initial_value": (_P, [_P, ctypes.POINTER(_SZ)]),
    "bpf_map__pin": (_I, [_P, _S]),
    "bpf_map__unpin": (_I, [_P, _S]),
    "bpf_map__lookup_elem": (_I, [_P, _P, _SZ, _P, _SZ, ctypes.c_uint64]),
    "bpf_map__update_elem": (_I, [_P, _P, _SZ, _P, _SZ, ctypes.c_uint64]),
    "bpf_map__delete_elem": (_I, [_P, _P, _SZ, ctypes.c_uint64]),
    "bpf_map__get_next_key": (_I, [_P, _P, _P, _SZ]),
    "btf__load_vmlinux_btf": (_P, []),
    "btf__free": (None, [_P]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_P, _S, _U32]),
    "btf__type_by_id": (_P, [_P, _U32]),
    "btf__name_by_offset": (_S, [_P, _U32]),
    "bpf_prog_load": (_I, [_I, _S, _S, _P, _SZ, _P]),
    "bpf_map_create": (_I, [_I, _S, _U32, _U32, _U32, _P]),
    "bpf_link_create": (_I, [_I, _I, _I, _P]),
    "bpf_raw_tracepoint_open": (_I, [_S, _I]),
    "bpf_obj_get_info_by_fd": (_I, [_I, _P, ctypes.POINTER(_U32)]),
    "bpf_enable_stats": (_I, [_I]),
    "ring_buffer__new": (_P, [_I, _P, _P, _P]),
    "ring_buffer__add": (_I, [_P, _I, _P, _P]),
    "ring_buffer__consume": (_I, [_P]),
    "ring_buffer__poll": (_I, [_P, _I]),
    "ring_buffer__epoll_fd": (_I, [_P]),
    "ring_buffer__free": (None, [_P]),
}


def lib() -> ctypes.CDLL:
    """libbpf.so.1 ($SENSORIUM_LIBBPF overrides the path), with prototypes set and the print hook on."""
    global _lib, _libc
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        name = os.environ.get("SENSORIUM_LIBBPF") or "libbpf.so.1"
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise LibbpfError(_errno.ENOENT, f"cannot load {name} ({e}); install libbpf 1.x "
                              f"(apt-get install libbpf1) or set SENSORIUM_LIBBPF") from None
        missing = []
        for fn, (res, args) in _PROTOS.items():
            try:
                f = getattr(handle, fn)
            except AttributeError:
                missing.append(fn)
                continue
            f.restype = res
            f.argtypes = args
        if missing:
            raise LibbpfError(_errno.ENOSYS, f"{name} lacks {', '.join(missing)}: libbpf >= 1.1 is required")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.vsnprintf.restype = _I
        libc.vsnprintf.argtypes = [_P, _SZ, _S, _P]
        _libc = libc
        handle.libbpf_set_print(_print_cb_c)
        _lib = handle
        return handle


def _errno_now(default: int = _errno.EIO) -> int:
    return ctypes.get_errno() or default


def num_possible_cpus() -> int:
    n = lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise LibbpfError(-n, "libbpf_num_possible_cpus")
    return int(n)


def _s(b: bytes | None) -> str:
    return b.decode(errors="replace") if b is not None else ""


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

    def __init__(self, obj: "BpfObject", ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = _s(lib().bpf_program__name(ptr))
        self.section: str = _s(lib().bpf_program__section_name(ptr))
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
            raise LibbpfError(_errno_now(), f"cannot attach {self._what()} {what}".rstrip())
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
                      pid: int = -1, retprobe: bool = False) -> BpfLink:
        """Attach a uprobe (or uretprobe) to ``binary`` at ``func_name`` (+``offset``) or at file
        ``offset``; ``pid=-1`` means every process. Library names are resolved by libbpf (``libc.so.6``)."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=bool(retprobe),
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

    def __init__(self, obj: "BpfObject", ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = _s(lib().bpf_map__name(ptr))

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
    def open(cls, path: str | os.PathLike[str], name: str | None = None) -> "BpfObject":
        """Open (not load) ``path``. ``name`` overrides the object name (used in map names and errors)."""
        path = Path(path)
        L = lib()
        opts = _ObjectOpenOpts(sz=ctypes.sizeof(_ObjectOpenOpts), object_name=name.encode() if name else None)
        mark = _log_mark()
        ptr = L.bpf_object__open_file(os.fspath(path).encode(), ctypes.byref(opts))
        if not ptr:
            raise LibbpfError(_errno_now(), f"cannot open BPF object {name or path.name!r} ({path})",
                              libbpf_log_tail(mark, 4096))
        return cls(ptr, name or _s(L.bpf_object__name(ptr)), path)

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
            sec = _s(L.btf__name_by_offset(btf, t.name_off))
            infos = (_BtfVarSecinfo * _btf_vlen(t)).from_address(tp + ctypes.sizeof(_BtfType))
            for info in infos:
                vp = L.btf__type_by_id(btf, info.type)
                if not vp:
                    continue
                v = _BtfType.from_address(vp)
                if _btf_kind(v) != BTF_KIND_VAR:
                    continue
                found[_s(L.btf__name_by_offset(btf, v.name_off))] = (m, info.offset, info.size, sec)
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
            raise LibbpfError(_errno_now(_errno.EINVAL),
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
        mark = _log_mark()
        err = L.bpf_object__load(self._ptr)
        if stats:
            for p in autoloaded:
                text = p._log_buf.value.decode(errors="replace") if p._log_buf is not None else ""
                st = _STATS.search(text)
                if st:
                    p.stats = {"insns": int(st.group(1)), "limit": int(st.group(2)),
                               "max_states_per_insn": int(st.group(3)), "total_states": int(st.group(4)),
                               "peak_states": int(st.group(5))}
                if err < 0 and p.stats and text.strip():
                    # the verdict at level 4: the error lines and the counts, framed like libbpf's log
                    _print_cb(0, (f"libbpf: prog '{p.name}': BPF program load failed\n"
                                  f"libbpf: prog '{p.name}': -- BEGIN PROG LOAD LOG --\n{text}"
                                  f"-- END PROG LOAD LOG --\n").encode(), None)
                L.bpf_program__set_log_buf(p._ptr, None, 0)
                p._log_buf = None
        if err < 0:
            tail = libbpf_log_tail(mark)
            culprit = _culprit(tail, self.programs)
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
                    e = _errno_now()
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

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten object must not keep programs attached forever; explicit close() is the norm.
        try:
            if self._ptr is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<BpfObject {self.name} {'closed' if self._ptr is None else 'loaded' if self.loaded else 'open'}>"


# struct bpf_prog_info (UAPI, append-only): verified_insns (5.16+) and the size that holds it.
_INFO_VERIFIED_INSNS = 216
_INFO_SIZE = 232
_STATS_LOG_SIZE = 64 * 1024


def _little() -> bool:
    import sys
    return sys.byteorder == "little"


def _culprit(tail: str, programs: dict[str, BpfProgram]) -> str | None:
    """The program libbpf blamed in its log ("libbpf: prog 'x': failed to load: ...")."""
    import re
    found = re.findall(r"prog '([^']+)': (?:failed|BPF program load failed|-- BEGIN)", tail)
    for name in reversed(found):
        if name in programs:
            return str(name)
    return None
