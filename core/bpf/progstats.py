"""Run counts and run time of the BPF programs this process holds, where the kernel exposes them.

The kernel counts only while run-time statistics are enabled. `enable_stats()` asks for them with
BPF_ENABLE_STATS, which returns an fd: statistics stay on while it is open, so they end with the agent
even if it is killed (unlike writing the kernel.bpf_stats_enabled sysctl). Programs are found through
/proc/self/fdinfo, so every program the agent holds is counted, whichever sensor loaded it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from collections import defaultdict

from sensorium.bpf.libbpf import lib

BPF_STATS_RUN_TIME = 0

# struct bpf_prog_info (UAPI, append-only, so these offsets never move; tests/test_bpf_progstats.py
# checks them against the running kernel's BTF).
INFO_NAME_OFF = 64
INFO_NAME_LEN = 16
INFO_RUN_TIME_NS_OFF = 192
INFO_RUN_CNT_OFF = 200
INFO_SIZE = 208


@dataclasses.dataclass(frozen=True)
class ProgStat:
    prog_id: int
    name: str
    run_cnt: int
    run_time_ns: int


def enable_stats() -> int:
    """Turn on run-time statistics for as long as the returned fd is open (close it to stop).
    Raises OSError when the kernel refuses (needs CAP_SYS_ADMIN, kernel >= 5.8)."""
    fd = int(lib().bpf_enable_stats(BPF_STATS_RUN_TIME))
    if fd < 0:
        err = -fd if fd < -1 else ctypes.get_errno()
        raise OSError(err, f"BPF_ENABLE_STATS: {os.strerror(err)}")
    return fd


def _prog_fds(fdinfo_dir: str = "/proc/self/fdinfo") -> dict[int, int]:
    """prog_id -> one fd of this process that refers to it."""
    out: dict[int, int] = {}
    try:
        names = os.listdir(fdinfo_dir)
    except OSError:
        return out
    for name in names:
        try:
            with open(f"{fdinfo_dir}/{name}") as f:
                text = f.read()
        except OSError:  # closed meanwhile
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                out.setdefault(int(line.split()[1]), int(name))
                break
    return out


def program_stats() -> list[ProgStat]:
    """One entry per distinct program this process holds."""
    stats = []
    for prog_id, fd in _prog_fds().items():
        buf = ctypes.create_string_buffer(INFO_SIZE)
        size = ctypes.c_uint32(INFO_SIZE)
        if lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)) != 0:
            continue  # the fd was closed and reused since the scan
        raw = buf.raw
        if int.from_bytes(raw[4:8], "little") != prog_id:
            continue
        name = raw[INFO_NAME_OFF:INFO_NAME_OFF + INFO_NAME_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
        run_time = int.from_bytes(raw[INFO_RUN_TIME_NS_OFF:INFO_RUN_TIME_NS_OFF + 8], "little")
        run_cnt = int.from_bytes(raw[INFO_RUN_CNT_OFF:INFO_RUN_CNT_OFF + 8], "little")
        stats.append(ProgStat(prog_id, name, run_cnt, run_time))
    return stats


def by_name(stats: list[ProgStat]) -> dict[str, tuple[int, int, int]]:
    """name -> (programs, runs, run_time_ns), summed over programs of the same name (one per hook)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for s in stats:
        agg = out[s.name]
        agg[0] += 1
        agg[1] += s.run_cnt
        agg[2] += s.run_time_ns
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}
