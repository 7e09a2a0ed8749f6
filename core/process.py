"""The process cache: who is running, with which exec_id, and who their parent is.

Every event names its process and parent in Tetragon's ``Process`` shape (exec_id, pid, binary,
arguments, parent_exec_id ...). The exec sensor feeds this cache (exec, fork, exit records); other
sensors only read it (`ProcessCache.get`). Running processes are read from /proc at start so that the
children of processes older than the agent have parents.

Memory is bounded: an entry lives while its process runs and while live children reference it; after
exit it is kept ``exited_grace_s`` for late events of other sensors, then freed. Past ``max_size``
entries the oldest exited ones are evicted first, then (counted as ``evictions_live``) the oldest live.

Also here, because every sensor and the Kubernetes stage need them: `CgroupResolver` (cgroup id ->
path under the mounted hierarchies) and `parse_container_id` (containerd, CRI-O, Docker, systemd).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sensorium import schema
from sensorium.events import ktime_to_wall_ns, rfc3339
from sensorium.k8s.containerid import container_id_from_cgroup_path

__all__ = ["ProcessCache", "CgroupResolver", "parse_container_id", "make_exec_id", "join_arguments", "same_image",
           "exec_pending",
           "SIGNAL_NAMES", "NAMESPACES"]

NAMESPACES = ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup",
              "user")

# The host's own numbering; exit records carry raw numbers.
SIGNAL_NAMES: dict[int, str] = {int(s): s.name for s in signal.Signals}

# Earlier images kept findable per pid (fork -> exec -> exec ... within one batch of records).
_EARLIER_IMAGES = 4

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def make_exec_id(node_name: str, ktime_ns: int, pid: int) -> str:
    """Tetragon's exec_id: base64 of ``node:ktime:pid`` (unique over the cluster and over time)."""
    return base64.b64encode(f"{node_name}:{ktime_ns}:{pid}".encode()).decode()


def exec_pending(cached: Mapping[str, Any], seen: str) -> bool:
    """Whether the cache's entry ``cached`` is a forked child's copy of its parent (flags ``clone``, no
    ``execve``) while a sensor saw the pid run another executable (``seen``): the child has exec'd and its
    exec record is not read yet. Only then is an event held for the exec record; any other entry is used."""
    flags = str(cached.get("flags", "")).split()
    return "clone" in flags and "execve" not in flags and not same_image(cached.get("binary"), seen)


def same_image(cached: Any, seen: str) -> bool:
    """Whether a cache entry's ``binary`` (the path the exec sensor read, inside the process's own root)
    names the executable a sensor saw as ``seen`` (/proc/<pid>/exe as the agent reads it: a container's
    files show under the host path of its root filesystem, ending in the same path)."""
    return isinstance(cached, str) and bool(cached) and (cached == seen or (
        cached.startswith("/") and seen.endswith(cached)))


def join_arguments(args: list[str]) -> str:
    """Tetragon's ``arguments``: argv[1:] joined with single spaces."""
    return " ".join(args)


# --------------------------------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------------------------------

# A 64-hex container id as the last token of a cgroup path component, in the formats of:
#   containerd (cgroupfs):  /kubepods/besteffort/pod<uid>/<id>
#   containerd (systemd):   .../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope
#   CRI-O:                  .../crio-<id>.scope        (and crio-conmon-<id>.scope for its monitor)
#   Docker:                 /docker/<id>               or /system.slice/docker-<id>.scope
#   Podman:                 .../libpod-<id>.scope


def parse_container_id(path: str | None) -> str | None:
    """The container id in a cgroup path, or None (searched from the leaf up). One parser for the exec
    sensor and the Kubernetes stage: `sensorium.k8s.containerid.container_id_from_cgroup_path`."""
    return container_id_from_cgroup_path(path)


def _mountinfo(path: str = "/proc/self/mountinfo") -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of every mount."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if len(fields) >= 5 and len(rfields) >= 3:
                    out.append((fields[4].replace("\\040", " "), rfields[0], rfields[2]))
    except OSError:
        pass
    return out


class CgroupResolver:
    """Resolve cgroup ids to paths (relative to the hierarchy root, starting with ``/``).

    A cgroup's id is the inode number of its directory (kernfs node id), on cgroup2 and on each v1
    hierarchy. Ids are cached; a miss rescans the hierarchy, at most once per ``rescan_interval_s``
    so a storm of short-lived cgroups cannot turn into a storm of directory walks.
    """

    def __init__(self, mountinfo: str = "/proc/self/mountinfo", rescan_interval_s: float = 0.5,
                 max_entries: int = 65536) -> None:
        self.v2_root: str | None = None
        self.v1_roots: dict[str, str] = {}
        for mnt, fstype, opts in _mountinfo(mountinfo):
            if fstype == "cgroup2" and self.v2_root is None:
                self.v2_root = mnt
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if (opt in ("memory", "cpu", "pids", "devices", "freezer", "blkio", "cpuset")
                            or opt.startswith("name=")):
                        self.v1_roots.setdefault(opt, mnt)
        self._cache: dict[str, dict[int, str]] = {}
        self._last_scan: dict[str, float] = {}
        self._max_id: dict[str, int] = {}
        self.rescan_interval_s = rescan_interval_s
        self.max_entries = max_entries
        self.scans = 0

    def _root(self, hierarchy: str) -> str | None:
        return self.v2_root if hierarchy == "v2" else self.v1_roots.get(hierarchy)

    def _scan(self, hierarchy: str, root: str) -> None:
        self.scans += 1
        found: dict[int, str] = {}
        for dirpath, _dirnames, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = dirpath[len(root):] or "/"
            found[ino] = rel
            if len(found) >= self.max_entries:
                break
        self._cache[hierarchy] = found
        self._max_id[hierarchy] = max(found, default=0)
        self._last_scan[hierarchy] = time.monotonic()

    def resolve(self, hierarchy: str, cgroup_id: int, name: str | None = None,
                parent_id: int | None = None) -> str | None:
        """Path of cgroup ``cgroup_id`` in ``hierarchy`` ("v2" or a v1 controller such as "memory").

        With the leaf ``name`` and ``parent_id`` (both in exec records) a new cgroup under a known
        parent is resolved without touching the filesystem. Otherwise a miss rescans the hierarchy: at
        once when the id is newer than anything seen (kernfs ids only grow), else at most once per
        ``rescan_interval_s``."""
        if not cgroup_id:
            return None
        cache = self._cache.setdefault(hierarchy, {})
        path = cache.get(cgroup_id)
        if path is not None:
            return path
        if name and parent_id:
            parent = cache.get(parent_id)
            if parent is not None:
                path = parent.rstrip("/") + "/" + name
                if len(cache) < self.max_entries:
                    cache[cgroup_id] = path
                return path
        root = self._root(hierarchy)
        if root is None:
            return None
        since = time.monotonic() - self._last_scan.get(hierarchy, -1e9)
        newer = cgroup_id > self._max_id.get(hierarchy, 0)
        if since < self.rescan_interval_s and not (newer and since >= 0.02):
            return None
        self._scan(hierarchy, root)
        return self._cache[hierarchy].get(cgroup_id)


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Entry:
    exec_id: str
    pid: int
    ktime: int
    parent_exec_id: str
    proc: dict[str, Any]  # Tetragon Process fields except refcnt (immutable once built)
    refcnt: int = 1  # 1 while running + 1 per live child entry that names this one as parent
    exited: bool = False
    holds_parent: bool = False  # whether it counted itself in its parent's refcnt


class ProcessCache:
    """Processes by pid (live) and by exec_id (live and recently exited).

    Fed by the exec sensor's decoder on the reader thread; read from there and from any thread that
    emits events, so every public method holds one lock (uncontended in the common case)."""

    def __init__(self, node_name: str, max_size: int = 65536, exited_grace_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, cgroups: CgroupResolver | None = None,
                 proc_root: str | None = "/proc") -> None:
        if max_size < 1:
            raise ValueError(f"process_cache.max_size must be >= 1, got {max_size}")
        self.node_name = node_name
        self.max_size = max_size
        self.exited_grace_s = exited_grace_s
        self._clock = clock
        # Resolves cgroup ids of exec records to paths (and so to container ids).
        self.cgroups = cgroups if cgroups is not None else CgroupResolver()
        self.proc_root = proc_root  # where a pid missing from the cache is looked up; None: never
        self._entries: dict[str, _Entry] = {}  # exec_id -> entry, insertion order = age
        self._pids: dict[int, str] = {}  # live pid -> exec_id
        # pid -> exec_id of its last exited process still in grace: events of other sensors come
        # through other rings and may be drained after the exit record (ProcessJoin in pipeline.py).
        self._gone: dict[int, str] = {}
        # pid -> exec_ids of its earlier images still in the cache (oldest first, a few): a record that a
        # sensor made before the pid's current image started (a forked child's calls before its exec,
        # drained after the exec record) belongs to one of them (`get` with the record's ktime).
        self._earlier: dict[int, list[str]] = {}
        self._interned: dict[tuple, dict[str, Any]] = {}
        self._exited: collections.OrderedDict[str, float] = collections.OrderedDict()  # exec_id -> exit time
        self._host_ns = self._read_ns("self")
        self._counters = collections.Counter[str]()
        self._suspects: set[str] = set()  # exec_ids missing from /proc at the last reap_dead()
        self._lock = threading.RLock()

    # ---- public API -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        with self._lock:
            c = self._counters
            return {
                "size": len(self._entries),
                "max_size": self.max_size,
                "live": len(self._pids),
                "exited": len(self._entries) - len(self._pids),
                "execs": c["execs"],
                "forks": c["forks"],
                "exits": c["exits"],
                "proc_scanned": c["proc_scanned"],
                "misses": c["misses"],
                "evictions": c["evictions"],
                "evictions_live": c["evictions_live"],
                "freed": c["freed"],
                "reaped": c["reaped"],
            }

    def scan_proc(self, proc_root: str = "/proc") -> int:
        """Add an entry for every running process (oldest first, so parents precede children)."""
        with self._lock:
            infos = []
            try:
                names = os.listdir(proc_root)
            except OSError:
                return 0
            for name in names:
                if name.isdigit():
                    info = self._read_proc(proc_root, int(name))
                    if info is not None:
                        infos.append(info)
            infos.sort(key=lambda i: (i["ktime"], i["pid"]))
            n = 0
            for info in infos:
                if info["pid"] in self._pids:
                    continue  # already known from a live event: that one is more precise
                self._insert_from_info(info["pid"], info["ktime"], info, flags="procFS", ppid=info["ppid"])
                n += 1
            self._counters["proc_scanned"] += n
            return n

    def on_exec(self, pid: int, ktime: int, info: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A process image started (execve). ``info`` keys (all optional but pid/ppid): tid, ppid,
        uid, euid, suid, fsuid, gid, egid, sgid, fsgid, auid, binary, args (list, argv[1:]),
        args_truncated, binary_truncated, binary_deleted, cwd, cwd_truncated, cgroup (dict with id, name,
        path, memory_id, memory_name, memory_path; missing paths are resolved), ns (dict name -> inum),
        docker. Returns (process, parent) in Tetragon's shape."""
        with self._lock:
            self._counters["execs"] += 1
            old = self._pids.get(pid)
            was_clone = False
            if old is not None:
                # The pid's previous image ends here without an exit of its own.
                old_entry = self._entries.get(old)
                was_clone = bool(old_entry and "clone" in old_entry.proc.get("flags", "").split())
                self._retire(old)
            ppid = int(info.get("ppid", 0))
            flags = ["execve"]
            if was_clone:
                flags.append("clone")
            entry = self._insert_from_info(pid, ktime, info, flags=" ".join(flags), ppid=ppid)
            return self._view(entry), self._parent_view(entry)

    def on_fork(self, parent_pid: int, child_pid: int, ktime: int) -> None:
        """A new thread group (fork/clone without CLONE_THREAD): the child runs its parent's image
        until it execs, so it gets a copy of the parent's fields with its own exec_id."""
        with self._lock:
            self._counters["forks"] += 1
            parent = self._live(parent_pid)
            old = self._pids.get(child_pid)
            if old is not None:  # a missed exit left a stale entry on a reused pid
                self._retire(old)
            exec_id = make_exec_id(self.node_name, ktime, child_pid)
            if parent is None:
                self._counters["misses"] += 1
                proc = {"exec_id": exec_id, "pid": child_pid, "tid": child_pid, "flags": "clone",
                        "start_time": rfc3339(ktime_to_wall_ns(ktime))}
                entry = _Entry(exec_id, child_pid, ktime, "", proc)
            else:
                proc = dict(parent.proc)
                proc.update(exec_id=exec_id, pid=child_pid, tid=child_pid, parent_exec_id=parent.exec_id,
                            flags="clone", start_time=rfc3339(ktime_to_wall_ns(ktime)))
                entry = _Entry(exec_id, child_pid, ktime, parent.exec_id, proc)
            self._add(entry)

    def on_exit(self, pid: int, ktime: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The thread group ``pid`` exited. Returns (process, parent) as they were; the entry stays
        for ``exited_grace_s`` (and while children reference it), then is freed."""
        with self._lock:
            self._counters["exits"] += 1
            exec_id = self._pids.get(pid)
            if exec_id is None:
                self._counters["misses"] += 1
                return None, None
            entry = self._entries[exec_id]
            process, parent = self._view(entry, refcnt=entry.refcnt - 1), self._parent_view(entry)
            self._retire(exec_id)
            self._sweep()
            return process, parent

    def get(self, pid: int, ktime: int | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(process, parent) of the running process ``pid`` (a tgid), for other sensors' events.
        A miss tries /proc once (a process started between the scan and the sensor's attach).

        ``ktime``: when the event happened (the record's bpf_ktime_get_ns). An event older than the pid's
        current image (a forked child's calls before its exec, read after the exec record) gets the image
        that was running then, while it is still in the cache."""
        with self._lock:
            entry = self._current(pid)
            if entry is None:
                return None, None
            if ktime is not None and entry.ktime > ktime and pid in self._earlier:
                entry = self._image_at(pid, ktime) or entry
            return self._view(entry), self._parent_view(entry)

    def image_start(self, pid: int) -> int:
        """The ktime before which an event of ``pid`` belongs to an earlier image of it that is still in the
        cache (pass its ktime to `get`); 0 when there is none (every event gets the current image). For
        decoders that look a pid up once per batch."""
        with self._lock:
            if pid not in self._earlier:
                return 0
            entry = self._current(pid)
            return entry.ktime if entry is not None else 0

    def get_by_exec_id(self, exec_id: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(exec_id)
            return self._view(entry) if entry is not None else None

    def ancestors(self, pid: int, limit: int = 64) -> list[dict[str, Any]]:
        """The parent, grandparent ... of ``pid`` while they are in the cache (nearest first)."""
        with self._lock:
            out: list[dict[str, Any]] = []
            entry = self._live(pid)
            while entry is not None and entry.parent_exec_id and len(out) < limit:
                entry = self._entries.get(entry.parent_exec_id)
                if entry is None:
                    break
                out.append(self._view(entry))
            return out

    def reap_dead(self, proc_root: str = "/proc") -> int:
        """Retire live entries whose process has been gone from /proc since the previous call (their exit
        record was lost, e.g. the ring was full). Returns how many. Call every few tens of seconds."""
        with self._lock:
            # Independent of self.proc_root (the lookup fallback, which the agent turns off once the
            # exec sensor runs): this only asks whether a pid still exists.
            missing = {exec_id for pid, exec_id in self._pids.items() if not os.path.exists(f"{proc_root}/{pid}")}
            # Only what was already missing at the previous call: an exit record may still be on its way.
            gone = missing & self._suspects
            self._suspects = missing - gone
            for exec_id in gone:
                self._retire(exec_id)
            self._counters["reaped"] += len(gone)
            self._sweep()
            return len(gone)

    def sweep(self) -> None:
        """Free exited entries whose grace period is over (also done on every exit)."""
        with self._lock:
            self._sweep()

    # ---- internals ------------------------------------------------------------------------------

    def _view(self, entry: _Entry, refcnt: int | None = None) -> dict[str, Any]:
        d = dict(entry.proc)
        d["refcnt"] = max(0, entry.refcnt if refcnt is None else refcnt)
        return d

    def _parent_view(self, entry: _Entry) -> dict[str, Any] | None:
        if not entry.parent_exec_id:
            return None
        parent = self._entries.get(entry.parent_exec_id)
        return self._view(parent) if parent is not None else None

    def _current(self, pid: int) -> _Entry | None:
        """The running image of ``pid``, else its last one still in grace."""
        entry = self._live(pid)
        if entry is None:
            gone = self._gone.get(pid)
            entry = self._entries.get(gone) if gone is not None else None
        return entry

    def _image_at(self, pid: int, ktime: int) -> _Entry | None:
        """The latest earlier image of ``pid`` that had started at ``ktime``."""
        for exec_id in reversed(self._earlier.get(pid, ())):
            entry = self._entries.get(exec_id)
            if entry is not None and entry.ktime <= ktime:
                return entry
        return None

    def _live(self, pid: int) -> _Entry | None:
        exec_id = self._pids.get(pid)
        if exec_id is not None:
            return self._entries[exec_id]
        if pid <= 0 or self.proc_root is None:
            return None
        info = self._read_proc(self.proc_root, pid)
        if info is None:
            return None
        self._counters["proc_scanned"] += 1
        return self._insert_from_info(pid, info["ktime"], info, flags="procFS", ppid=info["ppid"])

    def _insert_from_info(self, pid: int, ktime: int, info: Mapping[str, Any], flags: str, ppid: int) -> _Entry:
        parent = self._live(ppid) if ppid and ppid != pid else None
        parent_exec_id = parent.exec_id if parent is not None else ""
        exec_id = make_exec_id(self.node_name, ktime, pid)
        args = list(info.get("args") or ())
        fl = flags.split()
        if info.get("args_truncated"):
            fl.append("truncArgs")
        if info.get("binary_truncated"):
            fl.append("truncFilename")
        cwd = info.get("cwd") or ""
        if cwd == "/":
            fl.append("rootcwd")
        if info.get("auid") is not None and "procFS" in fl:
            fl.append("auid")
        uid = int(info.get("uid", 0))
        gid = int(info.get("gid", 0))
        creds: dict[str, Any] = {
            "uid": uid, "gid": gid,
            "euid": int(info.get("euid", uid)), "egid": int(info.get("egid", gid)),
            "suid": int(info.get("suid", uid)), "sgid": int(info.get("sgid", gid)),
            "fsuid": int(info.get("fsuid", uid)), "fsgid": int(info.get("fsgid", gid)),
        }
        caps = None
        if info.get("caps") is not None:
            caps = self._intern(schema.capabilities(*info["caps"]))
            sb = schema.securebits(int(info.get("securebits") or 0))
            if sb:
                creds["securebits"] = sb
            creds["caps"] = caps
        user_ns = info.get("user_ns")
        ns_user = (info.get("ns") or {}).get("user")
        if ns_user:
            uns: dict[str, Any] = {}
            if user_ns is not None:
                level, owner, group = user_ns
                uns = {"level": int(level), "uid": int(owner), "gid": int(group)}
            uns["ns"] = self._intern({"inum": int(ns_user), "is_host": int(ns_user) == self._host_ns.get("user")})
            creds["user_ns"] = self._intern(uns)
        proc: dict[str, Any] = {
            "exec_id": exec_id,
            "pid": pid,
            "uid": uid,
            "cwd": cwd,
            "binary": info.get("binary") or "",
            "arguments": join_arguments(args),
            "flags": " ".join(fl),
            "start_time": rfc3339(ktime_to_wall_ns(ktime)),
            "auid": int(info["auid"]) if info.get("auid") is not None else 4294967295,
            "parent_exec_id": parent_exec_id,
            "tid": int(info.get("tid", pid)),
            "process_credentials": self._intern(creds),
            "arguments_truncated": bool(info.get("args_truncated")),
        }
        if caps is not None:
            proc["cap"] = caps
        if not parent_exec_id:
            del proc["parent_exec_id"]
        if info.get("binary_deleted"):  # unlinked file or memfd: a fileless exec is worth seeing
            proc["binary_deleted"] = True
        ns = info.get("ns")
        if ns:
            proc["ns"] = self._intern({
                name: self._intern({"inum": int(inum), "is_host": int(inum) == self._host_ns.get(name)})
                for name, inum in ns.items() if inum})
        cg = info.get("cgroup")
        if cg:
            cg = dict(cg)
            if self.cgroups is not None:
                if cg.get("id") and not cg.get("path"):
                    cg["path"] = self.cgroups.resolve("v2", int(cg["id"]), cg.get("name"),
                                                      cg.get("parent_id")) or ""
                if "memory" not in self.cgroups.v1_roots:
                    # Pure cgroup2: the memory controller's cgroup is the cgroup2 one, said above.
                    for key in ("memory_id", "memory_name", "memory_path"):
                        cg.pop(key, None)
                elif cg.get("memory_id") and not cg.get("memory_path"):
                    cg["memory_path"] = self.cgroups.resolve("memory", int(cg["memory_id"]), cg.get("memory_name"),
                                                             cg.get("memory_parent_id")) or ""
            cg.pop("parent_id", None)  # only needed to resolve the path
            cg.pop("memory_parent_id", None)
            proc["cgroup"] = self._intern(cg)
            docker = (info.get("docker") or parse_container_id(cg.get("path"))
                      or parse_container_id(cg.get("memory_path")))
        else:
            docker = info.get("docker")
        if docker:
            proc["docker"] = docker
        for key in ("binary", "cwd"):
            proc[key] = sys.intern(proc[key])
        entry = _Entry(exec_id, pid, ktime, parent_exec_id, proc)
        self._add(entry)
        return entry

    _INTERN_MAX = 4096

    def _intern(self, d: dict[str, Any]) -> dict[str, Any]:
        """One shared dict per distinct value: most processes of a node share their namespaces,
        credentials and cgroup, and these sub-dicts were most of an entry's memory. Shared dicts are
        read-only, like the events that carry them."""
        key = tuple((k, id(v) if isinstance(v, dict) else v) for k, v in d.items())
        got = self._interned.get(key)
        if got is None:
            if len(self._interned) >= self._INTERN_MAX:
                self._interned.clear()
            self._interned[key] = got = d
        return got

    def _add(self, entry: _Entry) -> None:
        prev = self._entries.pop(entry.exec_id, None)
        if prev is not None:  # same pid+ktime seen twice (e.g. /proc and an event): keep one
            self._exited.pop(prev.exec_id, None)
            self._release_parent(prev)
        self._entries[entry.exec_id] = entry
        self._pids[entry.pid] = entry.exec_id
        if entry.parent_exec_id:
            parent = self._entries.get(entry.parent_exec_id)
            if parent is not None:
                parent.refcnt += 1
                entry.holds_parent = True
        if len(self._entries) > self.max_size:
            self._evict()

    def _retire(self, exec_id: str) -> None:
        """The process behind ``exec_id`` stopped running (exit, or replaced by a new exec)."""
        entry = self._entries.get(exec_id)
        if entry is None:
            return
        if self._pids.get(entry.pid) == exec_id:
            del self._pids[entry.pid]
            self._gone[entry.pid] = exec_id
        if not entry.exited:
            images = self._earlier.setdefault(entry.pid, [])
            images.append(exec_id)
            if len(images) > _EARLIER_IMAGES:
                del images[0]
            entry.exited = True
            entry.refcnt -= 1
            self._exited[exec_id] = self._clock()
        if self.exited_grace_s <= 0 and entry.refcnt <= 0:
            self._free(entry)

    def _release_parent(self, entry: _Entry) -> None:
        if not entry.holds_parent:
            return
        entry.holds_parent = False
        parent = self._entries.get(entry.parent_exec_id)
        if parent is None:
            return
        parent.refcnt -= 1
        if parent.exited and parent.refcnt <= 0:
            t = self._exited.get(parent.exec_id)
            if t is None or self._clock() - t >= self.exited_grace_s:
                self._free(parent)

    def _free(self, entry: _Entry) -> None:
        if self._entries.pop(entry.exec_id, None) is None:
            return
        self._exited.pop(entry.exec_id, None)
        if self._pids.get(entry.pid) == entry.exec_id:
            del self._pids[entry.pid]
        if self._gone.get(entry.pid) == entry.exec_id:
            del self._gone[entry.pid]
        images = self._earlier.get(entry.pid)
        if images is not None and entry.exec_id in images:
            images.remove(entry.exec_id)
            if not images:
                del self._earlier[entry.pid]
        self._counters["freed"] += 1
        self._release_parent(entry)

    def _sweep(self) -> None:
        now = self._clock()
        # Oldest exits first; a still-referenced one leaves the queue and is freed by its last child.
        while self._exited:
            exec_id, t = next(iter(self._exited.items()))
            if now - t < self.exited_grace_s:
                break
            del self._exited[exec_id]
            entry = self._entries.get(exec_id)
            if entry is not None and entry.refcnt <= 0:
                self._free(entry)

    def _evict(self) -> None:
        self._sweep()
        while len(self._entries) > self.max_size and self._exited:
            exec_id = next(iter(self._exited))
            entry = self._entries.get(exec_id)
            del self._exited[exec_id]
            if entry is not None:
                self._counters["evictions"] += 1
                self._free(entry)
        if len(self._entries) > self.max_size:
            # Exited entries that wait for children are not in the queue any more; then live ones.
            while len(self._entries) > self.max_size:
                entry = self._entries[next(iter(self._entries))]
                self._counters["evictions"] += 1
                if not entry.exited:
                    self._counters["evictions_live"] += 1
                self._free(entry)

    # ---- /proc ----------------------------------------------------------------------------------

    @staticmethod
    def _read_ns(pid: str, proc_root: str = "/proc") -> dict[str, int]:
        out = {}
        for name in NAMESPACES:
            try:
                out[name] = os.stat(f"{proc_root}/{pid}/ns/{name}").st_ino
            except OSError:
                pass
        return out

    def _read_proc(self, proc_root: str, pid: int) -> dict[str, Any] | None:
        """What /proc says about ``pid`` (a thread-group leader), or None if it is gone or a thread."""
        base = f"{proc_root}/{pid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"{base}/status", "rb") as f:
                status = f.read().decode(errors="replace")
        except OSError:
            return None
        # comm may hold spaces and parentheses: the fields start after the last ')'.
        rest = stat[stat.rfind(")") + 2:].split()
        try:
            ppid = int(rest[1])
            starttime = int(rest[19])
        except (IndexError, ValueError):
            return None
        fields: dict[str, list[str]] = {}
        for line in status.splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.split()
        if fields.get("Tgid", [str(pid)])[0] != str(pid):
            return None
        try:  # the capability sets in hex; the user namespace's level and owner are not in /proc
            caps: tuple[int, int, int] | None = (int(fields["CapPrm"][0], 16), int(fields["CapEff"][0], 16),
                                                 int(fields["CapInh"][0], 16))
        except (KeyError, IndexError, ValueError):
            caps = None
        uids = [int(x) for x in fields.get("Uid", ["0"] * 4)] + [0] * 4
        gids = [int(x) for x in fields.get("Gid", ["0"] * 4)] + [0] * 4
        try:
            binary = os.readlink(f"{base}/exe")
        except OSError:
            binary = ""
        try:
            with open(f"{base}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv and argv[-1] == b"":
                argv.pop()
            args = [a.decode(errors="replace") for a in argv[1:]]
        except OSError:
            args = []
        try:
            cwd = os.readlink(f"{base}/cwd")
        except OSError:
            cwd = ""
        try:
            with open(f"{base}/loginuid") as f:
                auid: int | None = int(f.read().strip())
        except (OSError, ValueError):
            auid = None
        cgroup: dict[str, Any] = {}
        try:
            with open(f"{base}/cgroup") as f:
                for line in f:
                    hid, ctrls, path = line.rstrip("\n").split(":", 2)
                    if hid == "0" and ctrls == "":
                        cgroup["path"] = path
                        cgroup["name"] = path.rsplit("/", 1)[-1]
                    elif "memory" in ctrls.split(","):
                        cgroup["memory_path"] = path
                        cgroup["memory_name"] = path.rsplit("/", 1)[-1]
        except (OSError, ValueError):
            pass
        if self.cgroups is not None:
            for key, hier, root in (("path", "v2", self.cgroups.v2_root),
                                    ("memory_path", "memory", self.cgroups.v1_roots.get("memory"))):
                if root and key in cgroup:
                    try:
                        cgroup["id" if hier == "v2" else "memory_id"] = os.stat(root + cgroup[key]).st_ino
                    except OSError:
                        pass
        if binary.endswith(" (deleted)"):
            binary = binary[: -len(" (deleted)")]
        return {
            "pid": pid, "tid": pid, "ppid": ppid,
            "ktime": starttime * (1_000_000_000 // _CLK_TCK),
            "uid": uids[0], "euid": uids[1], "suid": uids[2], "fsuid": uids[3],
            "gid": gids[0], "egid": gids[1], "sgid": gids[2], "fsgid": gids[3],
            "auid": auid, "binary": binary, "args": args, "cwd": cwd,
            "cgroup": cgroup or None, "ns": self._read_ns(str(pid), proc_root), "caps": caps,
        }
