"""Policy scopes in user space: build a `Scope` from cgroup directories, and tell whether a process is in one.

The kernel side (sensorium/scope.h, filled by `sensorium.bpf.scope`) is what enforces a scope; these
helpers serve the mechanisms that decide in user space (fanotify permission events, the agent's Sigkill
fallback) and tests, with the same meaning: a process is in scope when its cgroup, or an ancestor of it,
is one of the scope's cgroups, in the unified hierarchy or the v1 memory controller's; with ``host``,
processes under none of the container roots are in scope too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sensorium.hookspecs import HIERARCHIES, CgroupRef, Scope

__all__ = ["hierarchy_mounts", "ref_of_directory", "scope_of_directories", "proc_cgroup_dirs", "process_in_scope",
           "dirs_in_scope"]


def hierarchy_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """``{"cgroup2": mount point, "memory": mount point}`` for the hierarchies mounted here (either may be
    missing: no v1 memory controller on a pure cgroup2 host)."""
    out: dict[str, str] = {}
    depth: dict[str, int] = {}
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        # The hierarchy's root is "/"; seen from a private cgroup namespace (an agent in a pod, with the
        # host's /sys/fs/cgroup mounted over its own) it is "/../..": the more "..", the higher up, and the
        # one to use. A bind mount of a sub-cgroup ("/kubepods/...") is not the hierarchy's root.
        parts = [p for p in fields[3].split("/") if p]
        if any(p != ".." for p in parts):
            continue
        mnt = fields[4].replace("\\040", " ")
        fstype, opts = rfields[0], set(rfields[2].split(","))
        hier = "cgroup2" if fstype == "cgroup2" else "memory" if fstype == "cgroup" and "memory" in opts else None
        if hier is None:
            continue
        if hier not in out or len(parts) > depth[hier] or (len(parts) == depth[hier] and mnt == out[hier]):
            out[hier], depth[hier] = mnt, len(parts)  # the same mount point again: the later one shadows
    return out


def ref_of_directory(path: str, mounts: dict[str, str] | None = None) -> CgroupRef:
    """The `CgroupRef` of a cgroup directory of the cgroup2 or the v1 memory hierarchy; ValueError naming
    the path when it is neither."""
    mounts = hierarchy_mounts() if mounts is None else mounts
    real = os.path.realpath(path)
    for hier in HIERARCHIES:
        root = mounts.get(hier)
        if root is None:
            continue
        root = os.path.realpath(root)
        if real == root or real.startswith(root + "/"):
            if not os.path.exists(os.path.join(real, "cgroup.procs")):
                raise ValueError(f"scope cgroup {path!r} is not a cgroup directory")
            return CgroupRef(hierarchy=hier, id=os.stat(real).st_ino, path=real)
    known = ", ".join(f"{h} at {m}" for h, m in sorted(mounts.items())) or "none mounted"
    raise ValueError(f"scope cgroup {path!r} is in neither the cgroup2 nor the v1 memory hierarchy ({known})")


def scope_of_directories(dirs: Iterable[str], host: bool = False,
                         container_roots: Iterable[str] = ()) -> Scope:
    """A `Scope` from cgroup directories (tests, and users scoping a policy to cgroups they manage)."""
    mounts = hierarchy_mounts()
    return Scope(cgroups=tuple(ref_of_directory(d, mounts) for d in dirs), host=host,
                 container_roots=tuple(ref_of_directory(d, mounts) for d in container_roots))


def proc_cgroup_dirs(pid: int, mounts: dict[str, str] | None = None) -> dict[str, str]:
    """The absolute cgroup directories of process ``pid`` per hierarchy (from /proc/<pid>/cgroup); empty when
    the process is gone."""
    mounts = hierarchy_mounts() if mounts is None else mounts
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "" and "cgroup2" in mounts:
            out["cgroup2"] = os.path.join(mounts["cgroup2"], path.lstrip("/")).rstrip("/") or "/"
        elif "memory" in ctrls.split(",") and "memory" in mounts:
            out["memory"] = os.path.join(mounts["memory"], path.lstrip("/")).rstrip("/") or "/"
    return out


def _under(path: str, top: str) -> bool:
    top = top.rstrip("/") or "/"
    return path == top or path.startswith(top + "/") or top == "/"


def dirs_in_scope(dirs: dict[str, str], scope: Scope | None) -> bool:
    """Same decision as sens_task_in_scope() in the kernel, for a process whose cgroup directories per
    hierarchy are ``dirs``. ``scope`` None: host-wide, everything is in scope."""
    if scope is None:
        return True
    container = False
    for ref in scope.cgroups:
        d = dirs.get(ref.hierarchy)
        if d is not None and _under(d, ref.path):
            return True
    for ref in scope.container_roots:
        d = dirs.get(ref.hierarchy)
        if d is not None and _under(d, ref.path):
            container = True
    return scope.host and not container


def process_in_scope(pid: int, scope: Scope | None, mounts: dict[str, str] | None = None) -> bool:
    """Is process ``pid`` in ``scope`` now? A process that is gone is not."""
    if scope is None:
        return True
    dirs = proc_cgroup_dirs(pid, mounts)
    if not dirs:
        return False
    return dirs_in_scope(dirs, scope)
