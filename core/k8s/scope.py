"""Pod-scoped policies, the Kubernetes half: which cgroups a policy's selectors pick, as a contract `Scope`
(sensorium.hookspecs) kept current as pods come, change labels and go.

A `PodScope` is built from a policy's ``podSelector`` / ``containerSelector`` (Kubernetes label selectors:
matchLabels, matchExpressions with In / NotIn / Exists / DoesNotExist), ``hostSelector`` and, for a
``TracingPolicyNamespaced``, its namespace. `ScopeTracker` follows a `PodWatcher` and the kubepods cgroup
directories (`PodCgroups`: inotify on kubepods and its QoS children in every hierarchy, a bounded poll as
fallback) and calls ``on_update(scope)`` whenever the `Scope` changes:

- a selected pod without ``containerSelector``: the pod's own cgroup in every hierarchy where it exists
  (cgroup2 and the v1 memory controller's), so every container of the pod is covered from its first exec,
  including containers created later. The pod's cgroup enters the scope as soon as the runtime creates it
  (before the sandbox, let alone the app container, runs), matched to the pod by the uid in its name.
- with ``containerSelector`` (it matches the container ``name``, as in Tetragon): the selected containers'
  own cgroups, known once the pod status names their ids.
- ``container_roots``: the kubepods cgroups (``kubepods`` for the cgroupfs driver, ``kubepods.slice`` for
  systemd) of both hierarchies; ``host`` from ``hostSelector: {}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sensorium.hookspecs import CgroupRef, Scope
from sensorium.k8s.containerid import container_id_from_cgroup_path, pod_uid_from_cgroup_path, strip_runtime_prefix
from sensorium.k8s.watcher import ContainerInfo
from sensorium.scope import hierarchy_mounts, ref_of_directory

log = logging.getLogger("sensorium.k8s")

__all__ = ["LabelSelector", "PodScope", "PodCgroups", "ScopeTracker", "ScopeProvider", "cgroup2_root",
           "KUBEPODS_ROOTS"]

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
# The kubelet's top cgroup per driver (cgroupfs / systemd), directly under its cgroup root (its --cgroup-root,
# "/" unless set: then directly under each hierarchy's root).
KUBEPODS_ROOTS = ("kubepods", "kubepods.slice")
# QoS classes below it; Guaranteed pods sit directly under the root.
_QOS_DIRS = ("besteffort", "burstable", "kubepods-besteffort.slice", "kubepods-burstable.slice")


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector matches everything (as in Kubernetes)."""

    match_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    match_expressions: Sequence[tuple[str, str, tuple[str, ...]]] = ()

    @classmethod
    def parse(cls, doc: Any, where: str = "selector") -> LabelSelector:
        """From ``{"matchLabels": {...}, "matchExpressions": [{key, operator, values}]}`` (or a model
        with those attributes); ValueError naming the field for anything else."""
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            doc = {"matchLabels": getattr(doc, "matchLabels", {}),
                   "matchExpressions": [e if isinstance(e, Mapping) else
                                        {"key": e.key, "operator": e.operator, "values": list(e.values)}
                                        for e in getattr(doc, "matchExpressions", [])]}
        unknown = set(doc) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (matchLabels, matchExpressions)")
        labels = doc.get("matchLabels") or {}
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in labels.items()):
            raise ValueError(f"{where}.matchLabels: must map label names to string values")
        exprs = []
        for i, e in enumerate(doc.get("matchExpressions") or []):
            loc = f"{where}.matchExpressions[{i}]"
            if not isinstance(e, Mapping) or not isinstance(e.get("key"), str):
                raise ValueError(f"{loc}: needs a key")
            op = e.get("operator")
            if op not in OPERATORS:
                raise ValueError(f"{loc}.operator: {op!r} is not one of {', '.join(OPERATORS)}")
            values = tuple(str(v) for v in (e.get("values") or []))
            if op in ("In", "NotIn") and not values:
                raise ValueError(f"{loc}.values: {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise ValueError(f"{loc}.values: {op} takes no values")
            exprs.append((e["key"], op, values))
        return cls(dict(labels), tuple(exprs))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for k, v in self.match_labels.items():
            if labels.get(k) != v:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        parts += [f"{k} {op}{' (' + ','.join(v) + ')' if v else ''}" for k, op, v in self.match_expressions]
        return ", ".join(parts) or "(all)"


@dataclasses.dataclass(frozen=True)
class PodScope:
    """What a policy applies to. ``namespace`` None: every namespace. ``pods`` False: no pod at all (a
    policy with only ``hostSelector``). ``host``: host processes too (``hostSelector: {}``)."""

    namespace: str | None = None
    pod_selector: LabelSelector = dataclasses.field(default_factory=LabelSelector)
    container_selector: LabelSelector = dataclasses.field(default_factory=LabelSelector)
    host: bool = False
    pods: bool = True

    @classmethod
    def of_policy(cls, policy: Any) -> PodScope:
        """From a parsed `sensorium.policy.Policy` (namespace, pod_selector, container_selector, host_selector)."""
        pod_sel = getattr(policy, "pod_selector", None)
        cont_sel = getattr(policy, "container_selector", None)
        namespace = getattr(policy, "namespace", None)
        host = getattr(policy, "host_selector", False)
        return cls(namespace=namespace,
                   pod_selector=LabelSelector.parse(pod_sel, "spec.podSelector"),
                   container_selector=LabelSelector.parse(cont_sel, "spec.containerSelector"),
                   host=bool(host),
                   # hostSelector alone: the host's processes only (Tetragon); with any pod selection, both.
                   pods=not (host and pod_sel is None and cont_sel is None and namespace is None))

    @staticmethod
    def wanted(policy: Any) -> bool:
        """Whether ``policy`` is scoped at all (else it applies host-wide, `PolicyView.scope` None)."""
        return (getattr(policy, "pod_selector", None) is not None
                or getattr(policy, "container_selector", None) is not None
                or bool(getattr(policy, "host_selector", False))
                or getattr(policy, "kind", "") == "TracingPolicyNamespaced")

    def selects_pod(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if not self.pods:
            return False
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self.pod_selector.matches(labels)

    def matches(self, c: ContainerInfo) -> bool:
        return self.selects_pod(c.pod_namespace, c.pod_labels) and \
            self.container_selector.matches({"name": c.container_name})

    def describe(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "podSelector": self.pod_selector.describe() if self.pods else None,
                "containerSelector": None if self.container_selector.empty else self.container_selector.describe(),
                "host": self.host}


def cgroup2_root() -> str:
    """The cgroup2 mount: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a pure v2 one."""
    return hierarchy_mounts().get("cgroup2") or "/sys/fs/cgroup"


# ---- the kubepods directories -------------------------------------------------------------------------

_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_IGNORED, _IN_ONLYDIR = 0x100, 0x200, 0x400, 0x8000, 0x01000000
_IN_EVENT = struct.Struct("iIII")


class _Inotify:
    """inotify through ctypes (the standard library has no binding): directory creation/removal only."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd

    def watch(self, path: str) -> bool:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_CREATE | _IN_DELETE | _IN_ONLYDIR)
        return wd >= 0  # gone meanwhile (or the watch limit): the poll still finds it

    def drain(self) -> int:
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return n
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                return n
            n += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PodCgroups:
    """The kubepods cgroup directories of this node in every hierarchy (cgroup2 and v1 memory), both
    drivers: pod uid -> its cgroup per hierarchy, and the container roots.

    A thread waits on inotify (``IN_CREATE|IN_ONLYDIR`` on each hierarchy root, kubepods and its QoS
    children) and rescans those few directories on every wake, and at least every ``poll_s`` (the bound
    when inotify is missing or a watch could not be added). Listeners get ``cb(added_uids, removed_uids)``.
    """

    def __init__(self, mounts: Mapping[str, str] | None = None, poll_s: float | None = None,
                 cgroup_root: str = "/") -> None:
        self.mounts = dict(mounts if mounts is not None else hierarchy_mounts())
        # The kubelet's --cgroup-root, relative to each hierarchy's mount ("" for the default "/").
        self.cgroup_root = cgroup_root.strip("/")
        self._ino: _Inotify | None
        try:
            self._ino = _Inotify()
        except (OSError, AttributeError) as exc:
            log.warning("inotify unavailable (%s): pod cgroups found by polling", exc)
            self._ino = None
        self.poll_s = poll_s if poll_s is not None else (2.0 if self._ino is not None else 0.1)
        self._pods: dict[str, dict[str, str]] = {}   # uid -> {hierarchy: dir}
        self._roots: dict[str, list[str]] = {}       # hierarchy -> kubepods dirs
        self.first_seen: dict[str, float] = {}       # uid -> time.monotonic() the pod dir was first found
        self._listeners: list[Callable[[set[str], set[str]], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self.scans = 0
        self.wakes = 0
        self._thread: threading.Thread | None = None
        self._rescan()

    # ---- lookups ----------------------------------------------------------------------------------

    def pod_dirs(self, uid: str) -> dict[str, str]:
        """{hierarchy: the pod's cgroup directory} for the hierarchies where it exists now."""
        with self._lock:
            hit = dict(self._pods.get(uid) or {})
        # The thread may not have run yet (a pod created this instant): look directly too.
        return {h: d for h, d in hit.items() if os.path.isdir(d)} or self._find_pod(uid)

    def roots(self) -> dict[str, list[str]]:
        with self._lock:
            return {h: list(v) for h, v in self._roots.items()}

    @staticmethod
    def container_dir(pod_dir: str, container_id: str) -> str | None:
        """The cgroup of container ``container_id`` below its pod's (every runtime's naming)."""
        try:
            with os.scandir(pod_dir) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False) and container_id_from_cgroup_path(e.name) == container_id:
                        return e.path
        except OSError:
            pass
        return None

    def add_listener(self, cb: Callable[[set[str], set[str]], None]) -> None:
        self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[set[str], set[str]], None]) -> None:
        try:
            self._listeners.remove(cb)
        except ValueError:
            pass

    def status(self) -> dict[str, Any]:
        return {"mechanism": "inotify" if self._ino is not None else f"poll every {self.poll_s} s",
                "pods": len(self._pods), "roots": self.roots(), "scans": self.scans}

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> PodCgroups:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sensorium-k8s-cgroups", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")  # wakes _run's select()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._ino is not None:
            self._ino.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- scanning -----------------------------------------------------------------------------------

    def _levels(self) -> list[tuple[str, str, bool]]:
        """(hierarchy, directory, is_root) of every directory that can hold pod directories."""
        out = []
        for hier, mnt in sorted(self.mounts.items()):
            for name in KUBEPODS_ROOTS:
                top = os.path.join(mnt, self.cgroup_root, name) if self.cgroup_root else os.path.join(mnt, name)
                if os.path.isdir(top):
                    out.append((hier, top, True))
                    for q in _QOS_DIRS:
                        qd = os.path.join(top, q)
                        if os.path.isdir(qd):
                            out.append((hier, qd, False))
        return out

    def _find_pod(self, uid: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for hier, d, _root in self._levels():
            if hier in found:
                continue
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False) and pod_uid_from_cgroup_path(e.name) == uid:
                            found[hier] = e.path
                            break
            except OSError:
                continue
        return found

    def _rescan(self) -> tuple[set[str], set[str]]:
        self.scans += 1
        if self._ino is not None:
            for mnt in self.mounts.values():
                # kubepods itself may come (and go) later
                self._ino.watch(os.path.join(mnt, self.cgroup_root) if self.cgroup_root else mnt)
        pods: dict[str, dict[str, str]] = {}
        roots: dict[str, list[str]] = {}
        for hier, d, is_root in self._levels():
            if self._ino is not None:
                self._ino.watch(d)  # idempotent: the same watch when already there
            if is_root:
                roots.setdefault(hier, []).append(d)
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if not e.is_dir(follow_symlinks=False):
                            continue
                        uid = pod_uid_from_cgroup_path(e.name)
                        if uid is not None:
                            pods.setdefault(uid, {})[hier] = e.path
            except OSError:
                continue
        now = time.monotonic()
        with self._lock:
            added = {u for u, dirs in pods.items() if self._pods.get(u) != dirs}
            removed = {u for u in self._pods if u not in pods}
            roots_changed = roots != self._roots
            self._pods, self._roots = pods, roots
            for u in added:
                self.first_seen.setdefault(u, now)
            for u in removed:
                self.first_seen.pop(u, None)
        if roots_changed:
            added = added | {""}  # "" = the container roots changed
        return added, removed

    def _run(self) -> None:
        fds = [self._wake_r] + ([self._ino.fd] if self._ino is not None else [])
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(fds, [], [], self.poll_s)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                ready = []
            if self._stop.is_set():
                return
            if self._ino is not None and self._ino.fd in ready:
                self.wakes += 1
                self._ino.drain()
            try:
                added, removed = self._rescan()
            except Exception:  # never let the scanner die
                log.exception("kubepods rescan failed")
                continue
            if added or removed:
                for cb in list(self._listeners):
                    try:
                        cb(added, removed)
                    except Exception:
                        log.exception("pod cgroup listener failed")


# ---- one policy's scope -------------------------------------------------------------------------------


def _refs(dirs: Sequence[str], mounts: Mapping[str, str]) -> list[CgroupRef]:
    out = []
    for d in dirs:
        try:
            out.append(ref_of_directory(d, dict(mounts)))
        except (ValueError, OSError):
            continue  # removed meanwhile
    return out


class ScopeTracker:
    """The `Scope` of one policy, kept current from a `PodWatcher` and `PodCgroups`.

    ``on_update(scope)`` is called with the whole new `Scope` each time it changes (serialized, on the pod
    watcher's or the cgroup scanner's thread; it must not block for long). `current()` gives it at any time.
    """

    def __init__(self, watcher: Any, scope: PodScope, on_update: Callable[[Scope], None] | None = None,
                 cgroups: PodCgroups | None = None) -> None:
        self.watcher = watcher
        self.scope = scope
        self.on_update = on_update
        self._own_cgroups = cgroups is None
        self.cgroups = cgroups if cgroups is not None else PodCgroups().start()
        self._lock = threading.RLock()
        self._current = Scope(host=scope.host)
        self._pods: list[str] = []
        self._waiting: list[str] = []  # selected pods with no cgroup (yet)
        self.updates = 0
        self.update_errors = 0
        # pod uid -> seconds from the scanner first seeing its cgroup to the scope update returning
        self.windows: dict[str, float] = {}
        self._closed = False
        self._started = time.monotonic()
        watcher.add_pod_listener(self._on_pod)
        self.cgroups.add_listener(self._on_cgroups)
        with self._lock:
            self._current, self._pods, self._waiting = self._compute()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.watcher.remove_pod_listener(self._on_pod)
        self.cgroups.remove_listener(self._on_cgroups)
        if self._own_cgroups:
            self.cgroups.stop()

    def current(self) -> Scope:
        with self._lock:
            return self._current

    def summary(self) -> dict[str, Any]:
        with self._lock:
            s = self._current
            return {"pods": list(self._pods), "waiting": list(self._waiting), "cgroups": len(s.cgroups),
                    "host": s.host, "container_roots": len(s.container_roots), "selector": self.scope.describe(),
                    "updates": self.updates,
                    # pod cgroup first seen by the scanner -> this scope update returned, for the last pods
                    "new_pod_windows_ms": [round(v * 1000, 2) for v in list(self.windows.values())[-5:]]}

    def refresh(self) -> None:
        """Recompute now (the pod and cgroup listeners call this)."""
        self._update(set())

    # ---- internals -------------------------------------------------------------------------------

    def _on_pod(self, what: str, pod: dict[str, Any]) -> None:
        self._update(set())

    def _on_cgroups(self, added: set[str], removed: set[str]) -> None:
        self._update(added)

    def _compute(self) -> tuple[Scope, list[str], list[str]]:
        dirs: list[str] = []
        names: list[str] = []
        waiting: list[str] = []
        if self.scope.pods:
            for pod in self.watcher.pods():
                meta = pod.get("metadata") or {}
                uid = str(meta.get("uid") or "")
                ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
                if not uid or self.watcher.pod_deleted(uid):
                    continue
                labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
                if not self.scope.selects_pod(ns, labels):
                    continue
                names.append(f"{ns}/{name}")
                pdirs = self.cgroups.pod_dirs(uid)
                if self.scope.container_selector.empty:
                    got = list(pdirs.values())
                else:
                    got = []
                    status = pod.get("status") or {}
                    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
                        for cs in status.get(key) or []:
                            cid = strip_runtime_prefix(cs.get("containerID") or "")
                            if cid and self.scope.container_selector.matches({"name": str(cs.get("name", ""))}):
                                got += [c for c in (self.cgroups.container_dir(d, cid) for d in pdirs.values()) if c]
                if got:
                    dirs += got
                else:
                    waiting.append(f"{ns}/{name}")
        mounts = self.cgroups.mounts
        def by_path(r: CgroupRef) -> tuple[str, str]:
            return (r.hierarchy, r.path)

        cg = sorted({(r.hierarchy, r.id): r for r in _refs(dirs, mounts)}.values(), key=by_path)
        roots = [d for ds in self.cgroups.roots().values() for d in ds]
        rr = sorted({(r.hierarchy, r.id): r for r in _refs(roots, mounts)}.values(), key=by_path)
        return Scope(cgroups=tuple(cg), host=self.scope.host, container_roots=tuple(rr)), sorted(names), sorted(waiting)

    def _update(self, new_uids: set[str]) -> None:
        with self._lock:
            if self._closed:
                return
            scope, names, waiting = self._compute()
            self._pods, self._waiting = names, waiting
            if scope == self._current:
                return
            self._current = scope
            self.updates += 1
            if self.on_update is not None:
                try:
                    self.on_update(scope)
                except Exception:  # a sensor bug must not stop the watcher
                    self.update_errors += 1
                    log.exception("scope update callback failed")
            now = time.monotonic()
            for r in scope.cgroups:
                uid = pod_uid_from_cgroup_path(r.path)
                t0 = self.cgroups.first_seen.get(uid or "")
                # only pods whose cgroup appeared while this tracker ran: the window of a new pod
                if uid and t0 is not None and t0 >= self._started and uid not in self.windows:
                    self.windows[uid] = now - t0
                    if len(self.windows) > 1024:
                        self.windows.pop(next(iter(self.windows)))


class ScopeProvider:
    """What the agent's `PolicyManager` uses to scope policies: one `PodCgroups` scanner shared by the
    `ScopeTracker` of every scoped policy, on the agent's `PodWatcher`."""

    def __init__(self, watcher: Any, cgroups: PodCgroups | None = None, cgroup_root: str = "/") -> None:
        self.watcher = watcher
        self.cgroups = cgroups
        self.cgroup_root = cgroup_root  # the kubelet's --cgroup-root
        self._lock = threading.Lock()

    def track(self, policy: Any, on_update: Callable[[Scope], None]) -> ScopeTracker:
        """A started tracker for ``policy`` (a `sensorium.policy.Policy`); ValueError naming a bad selector."""
        scope = PodScope.of_policy(policy)
        with self._lock:
            if self.cgroups is None:
                self.cgroups = PodCgroups(cgroup_root=self.cgroup_root).start()
        return ScopeTracker(self.watcher, scope, on_update=on_update, cgroups=self.cgroups)

    def status(self) -> dict[str, Any]:
        return self.cgroups.status() if self.cgroups is not None else {}

    def close(self) -> None:
        with self._lock:
            if self.cgroups is not None:
                self.cgroups.stop()
                self.cgroups = None
