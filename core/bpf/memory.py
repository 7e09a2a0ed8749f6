"""Kernel memory of loaded BPF objects, in the kernel's own figures, and what it would be on a larger node.

The kernel charges every map and program to its creator and says how much in the ``memlock`` line of the
descriptor's ``/proc/self/fdinfo`` entry (what ``bpftool ... show`` prints as ``bytes_memlock``). That is
the figure `kernel_memory` adds up, each map once (by its kernel id: a map several objects of a policy
share counts once) and without the maps the caller names as not its own (a sensor's one ring, shared by
every policy).

A per-CPU map holds one copy of its values per possible CPU, so its memory grows with the node. The
projection to ``cpus`` CPUs replaces this machine's per-CPU part (``round_up(value_size, 8)`` bytes per
entry and CPU) with that many CPUs; everything else (programs, plain maps, ring buffers) does not change
with the CPU count. Users size nodes by it: a policy's cost on a 96-CPU node is the figure that matters.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

__all__ = ["KernelMemory", "kernel_memory", "possible_cpus", "fdinfo", "PROJECTED_CPUS", "PROJECTED_KEY"]

# The node size the projection is made for (a common large Kubernetes node), and its key in status.
PROJECTED_CPUS = 96
PROJECTED_KEY = f"kernel_memory_bytes_{PROJECTED_CPUS}cpu"


@dataclasses.dataclass(frozen=True)
class KernelMemory:
    """Bytes charged by the kernel here, and the same objects' bytes on a node of `PROJECTED_CPUS` CPUs."""

    bytes: int = 0
    projected: int = 0

    def __add__(self, other: KernelMemory) -> KernelMemory:
        return KernelMemory(self.bytes + other.bytes, self.projected + other.projected)

    def as_status(self) -> dict[str, int]:
        return {"kernel_memory_bytes": self.bytes, PROJECTED_KEY: self.projected}


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    """The kernel's possible CPUs (the count per-CPU maps are sized by), from /sys/devices/system/cpu/possible."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            n += (int(hi) if hi else int(lo)) - int(lo) + 1
        except ValueError:
            continue
    return max(n, 1)


def fdinfo(fd: int) -> dict[str, str]:
    """The fields of ``/proc/self/fdinfo/<fd>`` ({} when it cannot be read)."""
    out: dict[str, str] = {}
    try:
        with open(f"/proc/self/fdinfo/{int(fd)}") as f:
            for line in f:
                k, sep, v = line.partition(":")
                if sep:
                    out[k.strip()] = v.strip()
    except (OSError, ValueError):
        pass
    return out


def _int(info: dict[str, str], key: str) -> int | None:
    try:
        return int(info[key])
    except (KeyError, ValueError):
        return None


def kernel_memory(objects: Iterable[Any], skip_maps: Iterable[str] = (), cpus: int = PROJECTED_CPUS,
                  seen: set[int] | None = None) -> KernelMemory:
    """The kernel memory of ``objects`` (`BpfObject`s: their loaded maps and programs). ``skip_maps``: map
    names that are not the caller's own; ``seen``: map ids already counted (shared across calls by a caller
    that adds several groups of objects). An object that is not loaded, or a descriptor the kernel no
    longer knows, adds nothing."""
    from sensorium.bpf.libbpf import MapType

    skip = frozenset(skip_maps)
    seen = set() if seen is None else seen
    here = extra = 0
    ncpu = possible_cpus()
    for obj in objects:
        try:
            maps = list(obj.maps.values())
            progs = list(obj.programs.values())
        except Exception:  # noqa: BLE001 - a closed object adds nothing
            continue
        for m in maps:
            if m.name in skip:
                continue
            try:
                fd = m.fd
            except Exception:  # noqa: BLE001
                continue
            if fd < 0:
                continue
            info = fdinfo(fd)
            mid, memlock = _int(info, "map_id"), _int(info, "memlock")
            if memlock is None or (mid is not None and mid in seen):
                continue
            if mid is not None:
                seen.add(mid)
            here += memlock
            if m.type in MapType.PERCPU:
                per_cpu = ((m.value_size + 7) // 8) * 8 * m.max_entries
                extra += per_cpu * (cpus - ncpu)
        for p in progs:
            try:
                fd = p.fd
            except Exception:  # noqa: BLE001
                continue
            if fd < 0:
                continue
            memlock = _int(fdinfo(fd), "memlock")
            if memlock is not None:
                here += memlock
    return KernelMemory(here, here + extra)
