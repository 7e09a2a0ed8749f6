"""Kernel maps of policy scopes: `Scope` -> the entries sensorium/scope.h reads, updated live without a gap.

A BPF object that includes ``sensorium/scope.h`` declares its scope map with ``SENS_SCOPE_MAP(name)``;
`ScopeMap(bpf_map).set(scope)` fills it, and later calls replace the scope: new entries are written
before stale ones are deleted, so a process that stays in scope is never uncovered in between.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

from sensorium.hookspecs import Scope

__all__ = ["HIER_IDS", "MAX_ENTRIES", "scope_entries", "ScopeMap"]

HIER_IDS = {"cgroup2": 0, "memory": 1}
FLAGS_HIER = 0xFF
INCLUDE, CONTAINER_ROOT = 1, 2
F_CGROUP2, F_MEMORY, F_HOST = 1, 2, 4
MAX_ENTRIES = 4096  # SENS_SCOPE_MAX_ENTRIES

_KEY = struct.Struct("<IIQ")


def scope_entries(scope: Scope) -> dict[bytes, bytes]:
    """The map entries of ``scope``: its cgroups (INCLUDE), container roots (CONTAINER_ROOT, only needed
    with ``host``) and the flags entry saying which hierarchies to walk."""
    entries: dict[bytes, bytes] = {}
    flags = F_HOST if scope.host else 0
    refs = [(r, CONTAINER_ROOT) for r in scope.container_roots] if scope.host else []
    refs += [(r, INCLUDE) for r in scope.cgroups]  # INCLUDE wins over a root with the same id
    for ref, value in refs:
        hier = HIER_IDS.get(ref.hierarchy)
        if hier is None:
            raise ValueError(f"scope cgroup {ref.path!r}: unknown hierarchy {ref.hierarchy!r}")
        flags |= F_CGROUP2 if hier == 0 else F_MEMORY
        entries[_KEY.pack(hier, 0, int(ref.id))] = bytes([value])
    if scope.host and not flags & (F_CGROUP2 | F_MEMORY):
        flags |= F_CGROUP2 | F_MEMORY  # host only, no container roots known: every process is a host one
    if len(entries) + 1 > MAX_ENTRIES:
        raise ValueError(f"the scope has {len(entries)} cgroups; the limit is {MAX_ENTRIES - 1}")
    if flags:
        entries[_KEY.pack(FLAGS_HIER, 0, 0)] = bytes([flags])
    return entries


class ScopeMap:
    """One scope map of a loaded object (thread-safe: the pod watcher's thread calls `set`)."""

    def __init__(self, bpf_map: Any) -> None:
        self.map = bpf_map
        self._have: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def set(self, scope: Scope) -> None:
        want = scope_entries(scope)
        with self._lock:
            flags_key = _KEY.pack(FLAGS_HIER, 0, 0)
            # cgroup entries first, the flags entry last when it appears (nothing is walked before it)...
            for k, v in want.items():
                if k != flags_key and self._have.get(k) != v:
                    self.map.update(k, v)
            if flags_key in want and self._have.get(flags_key) != want[flags_key]:
                # widening flags before the stale entries go is safe: stale entries only ever cover more
                self.map.update(flags_key, want[flags_key])
            for k in [k for k in self._have if k not in want]:
                self.map.delete(k)
            self._have = want

    def entries(self) -> int:
        return len(self._have)
