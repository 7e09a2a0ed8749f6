"""What the running kernel offers for eBPF, measured rather than guessed.

`probe_kernel` loads a trivial program (``r0 = 0; exit``) of each kind the sensors may use with
``bpf_prog_load`` (with the BTF attach target for tp_btf/fentry/fexit/fmod_ret/lsm), creates a ringbuf
map, and looks at the filesystems (tracefs, bpffs, securityfs, cgroup2, BTF). It also asks the verifier
whether the helpers and kfuncs our programs depend on are offered to the program type that would call
them (`FEATURES`): a kernel can have a program type and not the helper (5.10 has tp_btf but no
bpf_rdonly_cast, cgroup programs but no bpf_set_retval). The agent chooses mechanisms and fallbacks from
the result; ``sensorium probe`` prints it. `ensure_mounts` mounts the pseudo filesystems libbpf needs
when they are missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import os
import platform
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["KernelCapabilities", "ProbeResult", "probe_kernel", "ensure_mounts", "PROGRAM_TYPES", "FEATURES"]

PROGRAM_TYPES = ("tracepoint", "raw_tp", "tp_btf", "kprobe", "kprobe_multi", "fentry", "fexit", "fmod_ret",
                 "lsm", "uprobe", "cgroup_sock_addr", "ringbuf")

# Helpers and kfuncs, each asked of the program type that uses it (name -> what needs it):
FEATURES = {
    "bpf_rdonly_cast": "kfunc (6.2+) in tp_btf: the open-exit program reads the saved registers with it",
    "bpf_set_retval": "helper (5.18+) in cgroup sock_addr programs: Override with an errno other than EPERM",
    "bpf_loop": "helper (5.17+)",
    "bpf_get_func_arg": "helper (5.17+) in fentry/fexit",
    "bpf_d_path": "helper (5.10+) in lsm file_open: a file's path from the kernel's own d_path",
    "bpf_send_signal": "helper (5.3+) in tracepoints: Sigkill and Signal actions",
    "bpf_probe_write_user": "helper in uprobes, refused under kernel lockdown: the Set action of usdts",
}

TRACEFS = "/sys/kernel/tracing"
DEBUG_TRACEFS = "/sys/kernel/debug/tracing"
BPFFS = "/sys/fs/bpf"
SECURITYFS = "/sys/kernel/security"


def _mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fs type) of the mounts this process sees."""
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    # /proc/self/mounts escapes spaces etc. as octal (\040)
                    mp = parts[1].encode().decode("unicode_escape")
                    out.append((parts[0], mp, parts[2]))
    except OSError:
        pass
    return out


def _mount_point(fstype: str, prefer: tuple[str, ...] = ()) -> str | None:
    points = [mp for _, mp, t in _mounts() if t == fstype]
    for p in prefer:
        if p in points:
            return p
    return points[0] if points else None


def _mount(fstype: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount -t {fstype} {fstype} {target}: {os.strerror(e)}")


def ensure_mounts() -> list[str]:
    """Mount tracefs at /sys/kernel/tracing and securityfs at /sys/kernel/security when they are not
    mounted there (needs root). Returns the mount points it mounted. A mount that fails raises OSError
    naming it; the ones before it stay mounted (they are harmless and shared).

    bpffs is not among them: loading, attaching and ring buffers need no bpffs; only pinning does
    (`enforcement.persist`), and `ensure_bpffs` mounts it then. A bpffs mount is not free of content: on
    kernels built with CONFIG_BPF_PRELOAD every new mount shows the kernel's own `progs.debug` and
    `maps.debug` iterators, which is one more thing an agent that pins nothing should not leave behind."""
    done = []
    for fstype, target, also in (("tracefs", TRACEFS, (DEBUG_TRACEFS,)), ("securityfs", SECURITYFS, ())):
        mounted = {mp for _, mp, t in _mounts() if t == fstype}
        if target in mounted or any(a in mounted for a in also):
            continue
        if not os.path.isdir(target):
            continue  # e.g. no securityfs directory without CONFIG_SECURITYFS
        _mount(fstype, target)
        done.append(target)
    return done


def ensure_bpffs() -> bool:
    """Mount bpffs at /sys/fs/bpf when nothing is mounted there (needs root); True when this call mounted
    it. For pinning only: what is pinned there outlives the agent, so the mount stays."""
    if any(mp == BPFFS and t == "bpf" for _, mp, t in _mounts()):
        return False
    _mount("bpf", BPFFS)
    return True


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Whether one program type (or the ringbuf map) works here; ``error`` says why not."""

    ok: bool
    error: str | None = None


@dataclasses.dataclass
class KernelCapabilities:
    """What `probe_kernel` found. Mount points are None when the filesystem is not mounted."""

    release: str
    btf: bool
    bpf_lsm: bool
    tracefs: str | None
    bpffs: str | None
    securityfs: str | None
    cgroup2: str | None
    cgroup_v1: list[str]
    """Mount points of the mounted cgroup v1 hierarchies (e.g. /sys/fs/cgroup/memory)."""
    kprobes: bool
    """Kernel kprobes exist: the kprobe PMU (/sys/bus/event_source/devices/kprobe) or tracefs kprobe_events."""
    program_types: dict[str, ProbeResult]
    features: dict[str, ProbeResult] = dataclasses.field(default_factory=dict)
    """`FEATURES` (helpers and kfuncs) offered to the program type that would call them."""

    BOOL_NAMES = ("btf", "bpf_lsm", "kprobes")
    MOUNT_NAMES = ("tracefs", "bpffs", "securityfs", "cgroup2")

    def has(self, name: str) -> bool:
        """True if ``name`` (a `PROGRAM_TYPES` key, or btf/bpf_lsm/kprobes/tracefs/bpffs/securityfs/cgroup2)
        is available. An unknown name is not available (False)."""
        if name in self.program_types:
            return self.program_types[name].ok
        if name in self.features:
            return self.features[name].ok
        if name in self.BOOL_NAMES:
            return bool(getattr(self, name))
        if name in self.MOUNT_NAMES:
            return getattr(self, name) is not None
        return False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every name `has` knows."""
        return PROGRAM_TYPES + tuple(FEATURES) + cls.BOOL_NAMES + cls.MOUNT_NAMES

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["program_types"] = {k: dataclasses.asdict(v) for k, v in self.program_types.items()}
        d["features"] = {k: dataclasses.asdict(v) for k, v in self.features.items()}
        return d


# uapi numbers (stable ABI): enum bpf_prog_type, enum bpf_attach_type, enum bpf_map_type, BTF kinds
_PROG_KPROBE, _PROG_TRACEPOINT, _PROG_RAW_TRACEPOINT, _PROG_CGROUP_SOCK_ADDR, _PROG_TRACING, _PROG_LSM = \
    2, 5, 17, 18, 26, 29
_ATTACH_CGROUP_INET4_CONNECT, _ATTACH_TRACE_RAW_TP, _ATTACH_TRACE_FENTRY, _ATTACH_TRACE_FEXIT = 10, 23, 24, 25
_ATTACH_MODIFY_RETURN, _ATTACH_LSM_MAC, _ATTACH_TRACE_KPROBE_MULTI = 26, 27, 42
# enum bpf_func_id (uapi, stable)
_FN_D_PATH, _FN_SEND_SIGNAL, _FN_LOOP, _FN_GET_FUNC_ARG, _FN_SET_RETVAL = 147, 109, 181, 183, 187
_FN_PROBE_WRITE_USER = 36
_MAP_RINGBUF = 27
_BTF_KIND_STRUCT, _BTF_KIND_TYPEDEF, _BTF_KIND_FUNC = 4, 8, 12

# r0 = 0; exit
_INSNS = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


class _ProgLoadOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("attempts", ctypes.c_int), ("expected_attach_type", ctypes.c_int),
                ("prog_btf_fd", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_ifindex", ctypes.c_uint32), ("kern_version", ctypes.c_uint32),
                ("attach_btf_id", ctypes.c_uint32), ("attach_prog_fd", ctypes.c_uint32),
                ("attach_btf_obj_fd", ctypes.c_uint32), ("fd_array", ctypes.c_void_p),
                ("func_info", ctypes.c_void_p), ("func_info_cnt", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_void_p),
                ("line_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_void_p)]


class _KprobeMulti(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("cnt", ctypes.c_uint32), ("syms", ctypes.c_void_p),
                ("addrs", ctypes.c_void_p), ("cookies", ctypes.c_void_p)]


class _LinkCreateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("iter_info", ctypes.c_void_p),
                ("iter_info_len", ctypes.c_uint32), ("target_btf_id", ctypes.c_uint32),
                ("kprobe_multi", _KprobeMulti)]


def _err(e: int) -> str:
    e = abs(e)
    name = _errno.errorcode.get(e, f"errno {e}")
    return f"{name} ({os.strerror(e)})"


def _load(prog_type: int, name: str, attach_type: int = 0, btf_id: int = 0, code: bytes = _INSNS,
          log: list[str] | None = None) -> tuple[int, str | None]:
    """bpf_prog_load of ``code`` (default ``r0 = 0; exit``): (fd, None) or (-1, reason with the verifier's
    last words). ``log`` receives the verifier's log lines."""
    from sensorium.bpf.libbpf import lib
    L = lib()
    log_buf = ctypes.create_string_buffer(16384)
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=attach_type,
                         attach_btf_id=btf_id, log_level=1, log_size=len(log_buf),
                         log_buf=ctypes.cast(log_buf, ctypes.c_void_p))
    insns = ctypes.create_string_buffer(code, len(code))
    fd = L.bpf_prog_load(prog_type, name.encode(), b"GPL", insns, len(code) // 8, ctypes.byref(opts))
    lines = [ln.strip() for ln in log_buf.value.decode(errors="replace").splitlines() if ln.strip()]
    if log is not None:
        log.extend(lines)
    if fd >= 0:
        return fd, None
    reason = _err(fd)
    if lines:
        reason += f": {lines[-1]}"
    return -1, reason


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return (bytes([code, (src << 4) | dst]) + off.to_bytes(2, "little", signed=True)
            + imm.to_bytes(4, "little", signed=True))


_MOV_IMM, _CALL, _EXIT = 0xB7, 0x85, 0x95
_PSEUDO_KFUNC_CALL = 2
# What the verifier says when the program type is not offered a helper or kfunc at all (anything else, e.g.
# an argument of the wrong type -- ours are dummies -- means the call itself is allowed).
_NOT_OFFERED = ("unknown func", "invalid func", "not allowed in probe", "cannot use helper", "cannot call",
                "is not allowed", "kfunc", "kernel function", "not supported")


def _probe_call(prog_type: int, fn: int, kfunc: bool = False, attach_type: int = 0, btf_id: int = 0,
                r2: int = 0) -> ProbeResult:
    """Is helper (or, with ``kfunc``, the vmlinux BTF function id) ``fn`` offered to this program type?
    Loads ``r1..r5 = 0 (r2 = r2); call fn; r0 = 0; exit``."""
    code = b"".join(_insn(_MOV_IMM, dst=r, imm=r2 if r == 2 else 0) for r in range(1, 6))
    code += _insn(_CALL, src=_PSEUDO_KFUNC_CALL if kfunc else 0, imm=fn)
    code += _insn(_MOV_IMM, dst=0) + _insn(_EXIT)
    log: list[str] = []
    fd, reason = _load(prog_type, "sensorium_probe", attach_type, btf_id, code, log)
    if fd >= 0:
        _close(fd)
        return ProbeResult(True)
    if not log:  # refused before the verifier ran: the program type itself
        return ProbeResult(False, f"the program type does not load: {reason}")
    said = [ln for ln in log if any(w in ln for w in _NOT_OFFERED)]
    if said:
        return ProbeResult(False, f"{(reason or '').split(':')[0]}: {said[0]}")
    return ProbeResult(True)  # the verifier got past the call to our dummy arguments


def _probe_features(btf: _Btf, pt: dict[str, ProbeResult]) -> dict[str, ProbeResult]:
    out: dict[str, ProbeResult] = {}

    def via(kind: str, probe: Callable[[], ProbeResult]) -> ProbeResult:
        if not pt[kind].ok:
            return ProbeResult(False, f"no {kind} programs here ({pt[kind].error})")
        return probe()

    sys_exit = btf.find("btf_trace_sys_exit", _BTF_KIND_TYPEDEF)
    cast = btf.find("bpf_rdonly_cast", _BTF_KIND_FUNC)
    task = btf.find("task_struct", _BTF_KIND_STRUCT)
    if cast < 0:
        out["bpf_rdonly_cast"] = ProbeResult(False, "the kernel has no bpf_rdonly_cast kfunc (6.2+)")
    else:
        out["bpf_rdonly_cast"] = via("tp_btf", lambda: _probe_call(
            _PROG_TRACING, cast, kfunc=True, attach_type=_ATTACH_TRACE_RAW_TP, btf_id=sys_exit, r2=task))
    out["bpf_set_retval"] = via("cgroup_sock_addr", lambda: _probe_call(
        _PROG_CGROUP_SOCK_ADDR, _FN_SET_RETVAL, attach_type=_ATTACH_CGROUP_INET4_CONNECT))
    out["bpf_loop"] = via("tracepoint", lambda: _probe_call(_PROG_TRACEPOINT, _FN_LOOP))
    out["bpf_send_signal"] = via("tracepoint", lambda: _probe_call(_PROG_TRACEPOINT, _FN_SEND_SIGNAL))
    out["bpf_probe_write_user"] = via("uprobe", lambda: _probe_call(_PROG_KPROBE, _FN_PROBE_WRITE_USER))
    fopen = btf.find("security_file_open", _BTF_KIND_FUNC)
    out["bpf_get_func_arg"] = via("fentry", lambda: _probe_call(
        _PROG_TRACING, _FN_GET_FUNC_ARG, attach_type=_ATTACH_TRACE_FENTRY, btf_id=fopen))
    lsm_fopen = btf.find("bpf_lsm_file_open", _BTF_KIND_FUNC)
    out["bpf_d_path"] = via("lsm", lambda: _probe_call(
        _PROG_LSM, _FN_D_PATH, attach_type=_ATTACH_LSM_MAC, btf_id=lsm_fopen))
    return {k: out[k] for k in FEATURES}


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


class _Btf:
    """The vmlinux BTF through libbpf, for attach_btf_id lookups."""

    def __init__(self) -> None:
        from sensorium.bpf.libbpf import lib
        self.L = lib()
        self.ptr = self.L.btf__load_vmlinux_btf()
        self.error = None if self.ptr else _err(ctypes.get_errno() or _errno.ENOENT)

    def find(self, name: str, kind: int) -> int:
        if not self.ptr:
            return -1
        tid = self.L.btf__find_by_name_kind(self.ptr, name.encode(), kind)
        return tid if tid > 0 else -1

    def free(self) -> None:
        if self.ptr:
            self.L.btf__free(self.ptr)
            self.ptr = None


def _error_injection_list() -> list[str]:
    for path in ("/sys/kernel/debug/error_injection/list",):
        try:
            with open(path) as f:
                return [line.split()[0] for line in f if line.strip()]
        except OSError:
            pass
    return []


def _probe_btf_prog(btf: _Btf, prog_type: int, attach_type: int, candidates: list[tuple[str, int]],
                    attach: Callable[[int], int]) -> ProbeResult:
    """Load a BTF-attached program against the first candidate target that exists, then attach and detach
    it once (a trampoline can be refused at attach time even when the load passes)."""
    if not btf.ptr:
        return ProbeResult(False, f"no vmlinux BTF: {btf.error}")
    for target, kind in candidates:
        tid = btf.find(target, kind)
        if tid < 0:
            continue
        fd, reason = _load(prog_type, "sensorium_probe", attach_type, tid)
        if fd < 0:
            return ProbeResult(False, f"{reason} (target {target})")
        try:
            link = attach(fd)
            if link < 0:
                return ProbeResult(False, f"loads, but attach failed: {_err(link)} (target {target})")
            os.close(link)
            return ProbeResult(True)
        finally:
            _close(fd)
    return ProbeResult(False, f"no attach target in vmlinux BTF (tried {', '.join(t for t, _ in candidates)})")


def _link_create(attach_type: int) -> Callable[[int], int]:
    from sensorium.bpf.libbpf import lib

    def attach(fd: int) -> int:
        opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts))
        return int(lib().bpf_link_create(fd, 0, attach_type, ctypes.byref(opts)))
    return attach


def _raw_tp_open(name: str | None) -> Callable[[int], int]:
    from sensorium.bpf.libbpf import lib

    def attach(fd: int) -> int:
        return int(lib().bpf_raw_tracepoint_open(name.encode() if name else None, fd))
    return attach


def _kprobe_multi_attach(fd: int) -> int:
    from sensorium.bpf.libbpf import lib
    syms = (ctypes.c_char_p * 1)(b"do_unlinkat")
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts))
    opts.kprobe_multi.cnt = 1
    opts.kprobe_multi.syms = ctypes.cast(syms, ctypes.c_void_p)
    return int(lib().bpf_link_create(fd, 0, _ATTACH_TRACE_KPROBE_MULTI, ctypes.byref(opts)))


def _probe_plain(prog_type: int, attach_type: int = 0, needs: tuple[bool, str] | None = None) -> ProbeResult:
    fd, reason = _load(prog_type, "sensorium_probe", attach_type)
    if fd < 0:
        return ProbeResult(False, reason)
    _close(fd)
    if needs is not None and not needs[0]:
        return ProbeResult(False, f"loads, but {needs[1]}")
    return ProbeResult(True)


def _probe_ringbuf() -> ProbeResult:
    from sensorium.bpf.libbpf import lib
    fd = lib().bpf_map_create(_MAP_RINGBUF, b"sensorium_probe", 0, 0, max(os.sysconf("SC_PAGE_SIZE"), 4096), None)
    if fd < 0:
        return ProbeResult(False, _err(fd))
    os.close(fd)
    return ProbeResult(True)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _bpf_lsm_active() -> bool:
    lsm = _read(os.path.join(_mount_point("securityfs", (SECURITYFS,)) or SECURITYFS, "lsm"))
    if lsm is None:  # securityfs not mounted: the boot command line is the next best witness
        for arg in (_read("/proc/cmdline") or "").split():
            if arg.startswith("lsm="):
                lsm = arg[4:]
    return lsm is not None and "bpf" in lsm.strip().split(",")


def _probe() -> KernelCapabilities:
    from sensorium.bpf.libbpf import LibbpfError, lib

    mounts = _mounts()
    tracefs = _mount_point("tracefs", (TRACEFS, DEBUG_TRACEFS))
    kprobes = os.path.isdir("/sys/bus/event_source/devices/kprobe") or bool(
        tracefs and os.path.exists(os.path.join(tracefs, "kprobe_events")))
    uprobes = os.path.isdir("/sys/bus/event_source/devices/uprobe") or bool(
        tracefs and os.path.exists(os.path.join(tracefs, "uprobe_events")))
    caps = KernelCapabilities(
        release=platform.release(),
        btf=os.path.exists("/sys/kernel/btf/vmlinux"),
        bpf_lsm=_bpf_lsm_active(),
        tracefs=tracefs,
        bpffs=_mount_point("bpf", (BPFFS,)),
        securityfs=_mount_point("securityfs", (SECURITYFS,)),
        cgroup2=_mount_point("cgroup2", ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")),
        cgroup_v1=sorted(mp for _, mp, t in mounts if t == "cgroup"),
        kprobes=kprobes,
        program_types={},
    )
    try:
        lib()
    except LibbpfError as e:
        caps.program_types = {k: ProbeResult(False, str(e)) for k in PROGRAM_TYPES}
        return caps

    pt: dict[str, ProbeResult] = {}
    pt["tracepoint"] = _probe_plain(_PROG_TRACEPOINT, needs=(tracefs is not None, "tracefs is not mounted"))
    raw = _load(_PROG_RAW_TRACEPOINT, "sensorium_probe")
    if raw[0] < 0:
        pt["raw_tp"] = ProbeResult(False, raw[1])
    else:
        link = _raw_tp_open("sys_enter")(raw[0])
        _close(raw[0])
        pt["raw_tp"] = ProbeResult(True) if link >= 0 else ProbeResult(False, f"loads, but attach failed: {_err(link)}")
        _close(link)
    pt["kprobe"] = _probe_plain(_PROG_KPROBE, needs=(kprobes, ("the kernel has no kprobes "
                                                      "(no kprobe PMU, no kprobe_events in tracefs)")))
    km_fd, km_reason = _load(_PROG_KPROBE, "sensorium_probe", _ATTACH_TRACE_KPROBE_MULTI)
    if km_fd < 0:
        pt["kprobe_multi"] = ProbeResult(False, km_reason)
    else:
        link = _kprobe_multi_attach(km_fd)
        _close(km_fd)
        pt["kprobe_multi"] = ProbeResult(True) if link >= 0 else ProbeResult(
            False, f"loads, but attach failed: {_err(link)}")
        _close(link)

    btf = _Btf()
    try:
        pt["tp_btf"] = _probe_btf_prog(btf, _PROG_TRACING, _ATTACH_TRACE_RAW_TP,
                                       [("btf_trace_sched_process_exec", _BTF_KIND_TYPEDEF),
                                        ("btf_trace_sys_enter", _BTF_KIND_TYPEDEF)], _raw_tp_open(None))
        funcs = [("security_file_open", _BTF_KIND_FUNC), ("do_unlinkat", _BTF_KIND_FUNC),
                 ("vfs_read", _BTF_KIND_FUNC)]
        pt["fentry"] = _probe_btf_prog(btf, _PROG_TRACING, _ATTACH_TRACE_FENTRY, funcs,
                                       _link_create(_ATTACH_TRACE_FENTRY))
        pt["fexit"] = _probe_btf_prog(btf, _PROG_TRACING, _ATTACH_TRACE_FEXIT, funcs,
                                      _link_create(_ATTACH_TRACE_FEXIT))
        # fmod_ret needs a function on the error-injection list, or a security_* hook.
        inj = [(f, _BTF_KIND_FUNC) for f in _error_injection_list()[:5]]
        pt["fmod_ret"] = _probe_btf_prog(btf, _PROG_TRACING, _ATTACH_MODIFY_RETURN,
                                         [("security_file_open", _BTF_KIND_FUNC), *inj,
                                          ("should_failslab", _BTF_KIND_FUNC), ("should_fail_bio", _BTF_KIND_FUNC)],
                                         _link_create(_ATTACH_MODIFY_RETURN))
        lsm = _probe_btf_prog(btf, _PROG_LSM, _ATTACH_LSM_MAC, [("bpf_lsm_file_open", _BTF_KIND_FUNC)],
                              _link_create(_ATTACH_LSM_MAC))
        if lsm.ok and not caps.bpf_lsm:
            lsm = ProbeResult(False, "loads and attaches, but the BPF LSM is not active (boot with lsm=...,bpf)")
        pt["lsm"] = lsm
        pt["uprobe"] = _probe_plain(_PROG_KPROBE, needs=(uprobes, "the kernel has no uprobes (no uprobe PMU)"))
        pt["cgroup_sock_addr"] = _probe_plain(_PROG_CGROUP_SOCK_ADDR, _ATTACH_CGROUP_INET4_CONNECT,
                                              needs=(caps.cgroup2 is not None, "no cgroup2 hierarchy is mounted"))
        pt["ringbuf"] = _probe_ringbuf()
        caps.program_types = {k: pt[k] for k in PROGRAM_TYPES}
        caps.features = _probe_features(btf, pt)
    finally:
        btf.free()
    return caps


_cache: KernelCapabilities | None = None
_cache_lock = threading.Lock()


def probe_kernel(refresh: bool = False) -> KernelCapabilities:
    """Probe the running kernel (once per process unless ``refresh``). Needs root (CAP_BPF) for the
    program loads; without it every program type reports the EPERM it got."""
    global _cache
    with _cache_lock:
        if _cache is None or refresh:
            _cache = _probe()
        return _cache
