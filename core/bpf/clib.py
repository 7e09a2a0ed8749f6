"""libbpf.so.1 itself: loading it with its prototypes, the error it raises, and its log.

libbpf is loaded lazily on first use. Its log output goes through ``libbpf_set_print`` into Python
logging and into a bounded in-memory tail, so a failed call raises `LibbpfError` carrying the end of
the verifier log. libbpf >= 1.0 semantics are assumed (functions return ``-errno``, pointer functions
return NULL and set errno). The objects, programs, maps and links on top are `sensorium.bpf.libbpf`.
"""

from __future__ import annotations

import collections
import ctypes
import errno as _errno
import logging
import os
import platform
import threading
from typing import Any

from sensorium.bpf.verifier import verifier_reason

__all__ = ["LibbpfError", "cstr", "errno_now", "lib", "libbpf_log_tail", "log_mark", "num_possible_cpus",
           "record_log"]

# One logger for the whole binding (the name operators already filter on).
log = logging.getLogger("sensorium.bpf.libbpf")


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
    except Exception:  # noqa: BLE001 - never let an exception cross into C (ctypes would only print it)
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


def record_log(text: str) -> None:
    """Add ``text`` to libbpf's log as if libbpf had printed it at WARN (a verifier log kept elsewhere)."""
    _print_cb(0, text.encode(), None)


def log_mark() -> int:
    """A mark in libbpf's log: `libbpf_log_tail(since=mark)` is then what was logged after it."""
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
    "bpf_map_lookup_elem": (_I, [_I, _P, _P]),
    "bpf_map_delete_elem": (_I, [_I, _P]),
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


def errno_now(default: int = _errno.EIO) -> int:
    """errno as the last libbpf call on this thread left it (``default`` when it left none)."""
    return ctypes.get_errno() or default


def num_possible_cpus() -> int:
    n = lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise LibbpfError(-n, "libbpf_num_possible_cpus")
    return int(n)


def cstr(b: bytes | None) -> str:
    """A C string libbpf returned, as text ("" for NULL)."""
    return b.decode(errors="replace") if b is not None else ""

