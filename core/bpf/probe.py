"""What the running kernel offers for eBPF, measured rather than guessed.

`probe_kernel` loads a trivial program (``r0 = 0; exit``) of each kind the sensors may use with
``bpf_prog_load`` (with the BTF attach target for tp_btf/fentry/fexit/fmod_ret/lsm), creates a ringbuf
map, and looks at the filesystems (tracefs, bpffs, securityfs, cgroup2, BTF). The agent chooses
mechanisms and fallbacks from the result; ``sensorium probe`` prints it. `ensure_mounts` mounts the
pseudo filesystems libbpf needs when they are missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno as _errno
import os
import platform
import threading
from pathlib import Path
from typing import Any

__all__ = ["KernelCapabilities", "ProbeResult", "probe_kernel", "ensure_mounts", "PROGRAM_TYPES"]

PROGRAM_TYPES = ("tracepoint", "raw_tp", "tp_btf", "kprobe", "kprobe_multi", "fentry", "fexit", "fmod_ret",
                 "lsm", "uprobe", "cgroup_sock_addr", "ringbuf")

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
    """Mount tracefs at /sys/kernel/tracing, bpffs at /sys/fs/bpf and securityfs at /sys/kernel/security
    when they are not mounted there (needs root). Returns the mount points it mounted. A mount that
    fails raises OSError naming it; the ones before it stay mounted (they are harmless and shared)."""
    done = []
    for fstype, target, also in (("tracefs", TRACEFS, (DEBUG_TRACEFS,)), ("bpf", BPFFS, ()),
                                 ("securityfs", SECURITYFS, ())):
        mounted = {mp for _, mp, t in _mounts() if t == fstype}
        if target in mounted or any(a in mounted for a in also):
            continue
        if not os.path.isdir(target):
            continue  # e.g. no securityfs directory without CONFIG_SECURITYFS
        _mount(fstype, target)
        done.append(target)
    return done
