"""Pod-scoped policies, the Kubernetes half: which containers' cgroups a policy's selectors pick, kept
current as pods come, change labels and go.

A `PodScope` is built from a policy's ``podSelector`` / ``containerSelector`` (Kubernetes label
selectors: matchLabels, matchExpressions with In / NotIn / Exists / DoesNotExist) and, for a
``TracingPolicyNamespaced``, its namespace. `ScopeTracker` follows a `PodWatcher` and calls
``on_update(cgroup_dirs)`` with the cgroup2 directories of every selected container whenever the set
changes; a sensor turns those into the cgroup ids of its in-kernel scope map (``sens_cgroups``).

``containerSelector`` matches the container's name (as Tetragon does: the only key is ``name``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

from sensorium.k8s.watcher import ContainerInfo

log = logging.getLogger("sensorium.k8s")

__all__ = ["LabelSelector", "PodScope", "CgroupIndex", "ScopeTracker", "cgroup2_root"]

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector matches everything (as in Kubernetes)."""

    match_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    match_expressions: Sequence[tuple[str, str, tuple[str, ...]]] = ()

    @classmethod
    def parse(cls, doc: Any, where: str = "selector") -> "LabelSelector":
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
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
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


@dataclasses.dataclass(frozen=True)
class PodScope:
    """Which containers a policy applies to. ``namespace`` None: every namespace."""

    namespace: str | None = None
    pod_selector: LabelSelector = dataclasses.field(default_factory=LabelSelector)
    container_selector: LabelSelector = dataclasses.field(default_factory=LabelSelector)

    @classmethod
    def of_policy(cls, policy: Any) -> "PodScope":
        """From a parsed `sensorium.policy.Policy` (its namespace, pod_selector, container_selector)."""
        return cls(namespace=getattr(policy, "namespace", None),
                   pod_selector=LabelSelector.parse(getattr(policy, "pod_selector", None), "spec.podSelector"),
                   container_selector=LabelSelector.parse(getattr(policy, "container_selector", None),
                                                          "spec.containerSelector"))

    def matches(self, c: ContainerInfo) -> bool:
        if self.namespace is not None and c.pod_namespace != self.namespace:
            return False
        return self.pod_selector.matches(c.pod_labels) and self.container_selector.matches({"name": c.container_name})


def cgroup2_root() -> str:
    """The cgroup2 mount: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on a pure v2 one."""
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs"):
        return "/sys/fs/cgroup/unified"
    return "/sys/fs/cgroup"


class CgroupIndex:
    """Container id -> its cgroup2 directory. The container id is the leaf's name in every runtime
    format (``<id>``, ``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope``), so one
    walk of the kubepods subtree finds them; a miss rescans (bounded by ``max_dirs``)."""

    def __init__(self, root: str | None = None, max_dirs: int = 200_000) -> None:
        self.root = root or cgroup2_root()
        self.max_dirs = max_dirs
        self._dirs: dict[str, str] = {}
        self.scans = 0

    def _scan(self) -> None:
        from sensorium.k8s.containerid import container_id_from_cgroup_path

        self.scans += 1
        found: dict[str, str] = {}
        n = 0
        for dirpath, dirnames, _files in os.walk(self.root):
            n += 1
            if n > self.max_dirs:
                break
            name = os.path.basename(dirpath)
            cid = container_id_from_cgroup_path(name)
            if cid:
                found.setdefault(cid, dirpath)
                dirnames[:] = []  # a container's own sub-cgroups belong to it
        self._dirs = found

    def directory(self, container_id: str, rescan: bool = True) -> str | None:
        d = self._dirs.get(container_id)
        if d is not None and os.path.isdir(d):
            return d
        if rescan:
            self._scan()
            return self._dirs.get(container_id)
        return None


class ScopeTracker:
    """Keeps the cgroup2 directories of the containers a `PodScope` selects, from a `PodWatcher`.

    ``on_update(dirs)`` is called with the whole new set (sorted) each time it changes, on the watcher's
    thread; it must not block for long. `current()` gives the set at any time.
    """

    def __init__(self, watcher: Any, scope: PodScope, on_update: Callable[[list[str]], None] | None = None,
                 cgroups: CgroupIndex | None = None) -> None:
        self.watcher = watcher
        self.scope = scope
        self.on_update = on_update
        self.cgroups = cgroups or CgroupIndex()
        self._selected: dict[str, str] = {}  # container id -> cgroup dir
        self._lock = threading.Lock()
        self.updates = 0
        self.unplaced: set[str] = set()  # selected containers whose cgroup was not found (yet)
        watcher.add_listener(self._on_change)
        for c in watcher.containers():
            self._on_change("upsert", c, notify=False)
        self._notify()

    def close(self) -> None:
        self.watcher.remove_listener(self._on_change)

    def current(self) -> list[str]:
        with self._lock:
            return sorted(set(self._selected.values()))

    def _notify(self) -> None:
        self.updates += 1
        if self.on_update is not None:
            try:
                self.on_update(self.current())
            except Exception:  # noqa: BLE001 - a sensor bug must not stop the watcher
                log.exception("scope update callback failed")

    def _on_change(self, what: str, c: ContainerInfo, notify: bool = True) -> None:
        changed = False
        with self._lock:
            want = what == "upsert" and self.scope.matches(c)
            have = c.container_id in self._selected
            if want and not have:
                d = self.cgroups.directory(c.container_id)
                if d is None:
                    self.unplaced.add(c.container_id)
                else:
                    self._selected[c.container_id] = d
                    self.unplaced.discard(c.container_id)
                    changed = True
            elif not want and have:
                del self._selected[c.container_id]
                changed = True
            elif not want:
                self.unplaced.discard(c.container_id)
        if changed and notify:
            self._notify()
