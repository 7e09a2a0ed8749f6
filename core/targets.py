"""Checks behind `ExporterSpec.check` for exporters that write to a path: can this target ever be written?

A path on a kernel pseudo-filesystem (/proc, /sys, cgroupfs, debugfs...) is an interface to the kernel, not
storage: lines written there are refused at best and change kernel settings at worst (/proc/sys/*,
/proc/sysrq-trigger; the agent is root). A directory where a file goes, or a read-only mount, does not get
better by retrying either. These raise `TargetError` at start so the agent exits with one clear line
instead of running with a sink that loses every event. A missing file or directory is not an error (it is
created, or a collector creates its socket later).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from sensorium.hookspecs import TargetError

PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "bpf", "configfs", "devpts",
    "pstore", "efivarfs", "fusectl", "binfmt_misc", "mqueue", "nsfs", "autofs", "rpc_pipefs", "hugetlbfs",
    "selinuxfs", "smackfs",
})


@dataclasses.dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    read_only: bool


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1:i + 4]
        if field[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str | os.PathLike[str]) -> Mount | None:
    """The mount holding ``path`` (which must exist): the longest mount point above its real path, the
    last one mounted when several share it. None when /proc/self/mountinfo cannot be read."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        point = _unescape(fields[4])
        if not (real == point or real.startswith(point.rstrip("/") + "/")):
            continue
        if best is not None and len(point) < len(best.point):
            continue
        ro = "ro" in fields[5].split(",") or "ro" in tail[2].split(",")
        best = Mount(point, tail[0], ro)
    return best


def nearest_existing(path: Path) -> Path:
    """``path`` itself when it exists (even as a dangling symlink), else its closest existing ancestor."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _refuse_pseudo(path: Path, existing: Path, key: str) -> Mount | None:
    mount = mount_of(existing)
    if mount is not None and mount.fstype in PSEUDO_FILESYSTEMS:
        raise TargetError(f"{path} is on {mount.point} ({mount.fstype}), a kernel interface, not storage", key=key)
    return mount


def check_file_target(path: str | os.PathLike[str], *, key: str = "path") -> None:
    """Raise `TargetError` unless a regular file can be appended to (and rotated) at ``path``."""
    p = Path(os.path.abspath(path))
    existing = nearest_existing(p)
    mount = _refuse_pseudo(p, existing, key)
    if existing == p:
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            raise TargetError(f"{p} is a directory (the path names the file to write)", key=key)
        if stat.S_ISLNK(st.st_mode):
            raise TargetError(f"{p} is a symbolic link (the agent runs as root and never writes through one)", key=key)
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(f"{p} is not a regular file", key=key)
        directory = p.parent
    else:
        if not existing.is_dir():
            raise TargetError(f"{existing} is not a directory, so {p} cannot be created", key=key)
        directory = existing
    if os.statvfs(existing).f_flag & os.ST_RDONLY or (mount is not None and mount.read_only):
        where = mount.point if mount is not None else str(existing)
        raise TargetError(f"{p} is on a read-only mount ({where})", key=key)
    # Rotation renames inside the directory, so the directory itself must be writable.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise TargetError(f"{directory} is not writable by this agent (uid {os.geteuid()})", key=key)
    if existing == p and not os.access(p, os.W_OK):
        raise TargetError(f"{p} is not writable by this agent (uid {os.geteuid()})", key=key)


def check_socket_target(path: str | os.PathLike[str], *, key: str = "address") -> None:
    """Raise `TargetError` unless ``path`` is, or may later become, a unix socket a collector listens on."""
    p = Path(os.path.abspath(path))
    existing = nearest_existing(p)
    _refuse_pseudo(p, existing, key)
    if existing == p:
        try:
            st = os.stat(p)  # follows a symlink: /dev/log often points into /run
        except OSError:
            return  # a dangling link: the collector may create its target later
        if stat.S_ISDIR(st.st_mode):
            raise TargetError(f"{p} is a directory, not a socket", key=key)
        if not stat.S_ISSOCK(st.st_mode):
            raise TargetError(f"{p} is not a socket", key=key)
    elif not existing.is_dir():
        raise TargetError(f"{existing} is not a directory, so no socket can appear at {p}", key=key)


def check_readable_files(files: Iterable[tuple[str, str | os.PathLike[str] | None]]) -> None:
    """Files an exporter must read (TLS keys, passwords, header values), each with the config key that names it
    (None: not configured, skipped). One that is missing, not a regular file or cannot be opened never gets
    better by retrying: `TargetError` naming its key."""
    for key, path in files:
        if path is None:
            continue
        p = Path(path)
        if not p.is_file():
            raise TargetError(f"{p} {'is not a regular file' if p.exists() else 'does not exist'}", key=key)
        try:
            with open(p, "rb"):
                pass
        except OSError as exc:
            raise TargetError(f"{p}: {exc.strerror}", key=key) from None
