"""The Kubernetes enrichment stage: add Tetragon's ``pod`` object to each event's process and parent.

The container id comes from the process (``process.docker``, else its cgroup paths). A process in a
container the pod watcher does not know yet (the exec of a container's first process usually comes
before the kubelet writes the container id into the pod status) is held, in order per container, and
retried until its pod is known or ``hold_s`` has passed; then it is sent without its pod and says so in
``process.pod_unresolved``. Host processes (no container id) pass at once.

Pipeline use (`sensorium.pipeline.Stage`)::

    enricher = Enricher(watcher, hold_s=5.0)
    pipeline.stages.append(enricher)             # after ProcessJoin; batch -> the events ready now
    # Pipeline.tick() (every reader poll) sees `enricher.held` and submits [] to release due events.
    pipeline.submit(enricher.flush())            # at shutdown, before the exporters close
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, overload

from sensorium.events import Event
from sensorium.k8s.containerid import container_id_from_cgroup_path, pod_uid_from_cgroup_path
from sensorium.k8s.watcher import ContainerInfo

log = logging.getLogger("sensorium.k8s")

__all__ = ["Enricher", "ContainerLookup", "container_id_of"]


class ContainerLookup(Protocol):
    """What the enricher needs from the pod watcher (`PodWatcher` implements it)."""

    def container(self, container_id: str) -> ContainerInfo | None: ...

    @property
    def synced(self) -> bool: ...


def container_id_of(process: Mapping[str, Any]) -> str | None:
    """The container id of a Tetragon-shaped process: ``docker`` first, then its cgroup paths."""
    cid = process.get("docker")
    if isinstance(cid, str) and cid:
        return cid
    cg = process.get("cgroup")
    if isinstance(cg, Mapping):
        # The leaf names too: a brand-new container's cgroup id may not be resolved to a path yet, but
        # its leaf ("<id>", "cri-containerd-<id>.scope") already names the container.
        for key in ("path", "memory_path", "name", "memory_name"):
            p = cg.get(key)
            if isinstance(p, str):
                cid = container_id_from_cgroup_path(p)
                if cid:
                    return cid
    return None


def outside_kubernetes(process: Mapping[str, Any]) -> bool:
    """True when the process's full cgroup path is known and names no pod: a container of Docker,
    Podman or a runtime used directly, which no pod will ever claim (so holding it would only delay it)."""
    cg = process.get("cgroup")
    if not isinstance(cg, Mapping):
        return False
    paths = [p for p in (cg.get("path"), cg.get("memory_path")) if isinstance(p, str) and p.count("/") > 1]
    return bool(paths) and all(pod_uid_from_cgroup_path(p) is None for p in paths)


def _ns_pid(pid: Any, proc_root: str) -> int | None:
    """The pid inside the container's pid namespace (last NSpid of /proc/<pid>/status), if still alive."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


class Enricher:
    """Adds ``pod`` to ``process`` and ``parent`` of every event whose process runs in a known container.

    Not thread-safe for concurrent `process` calls (the pipeline calls it under its own lock); lookups
    into the watcher are lock-free.
    """

    def __init__(self, pods: ContainerLookup, *, hold_s: float = 5.0, max_held: int = 10000,
                 proc_root: str | None = "/proc", clock: Callable[[], float] = time.monotonic) -> None:
        self.pods = pods
        self.hold_s = hold_s
        self.max_held = max_held
        self.proc_root = proc_root
        self._clock = clock
        # container id -> events waiting for it, in arrival order, with their deadline.
        self._held: collections.OrderedDict[str, collections.deque[tuple[float, Event]]] = collections.OrderedDict()
        self._n_held = 0
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {
            "container_events": 0, "with_pod": 0, "held": 0, "released_resolved": 0,
            "released_unresolved": 0, "dropped_over_limit": 0, "host_events": 0, "non_pod_containers": 0,
        }

    # ---- one event --------------------------------------------------------------------------------

    def _pod_for(self, process: Mapping[str, Any]) -> dict[str, Any] | None:
        cid = container_id_of(process)
        if not cid:
            return None
        info = self.pods.container(cid)
        if info is None:
            return None
        pid = _ns_pid(process.get("pid"), self.proc_root) if self.proc_root else None
        return info.tetragon_pod(pid)

    def enrich(self, event: Event, unresolved_reason: str | None = None) -> Event:
        """The event with ``pod`` added where its container is known (no holding). When the process's
        container is not known and ``unresolved_reason`` is given, ``process.pod_unresolved`` says why."""
        body = event.body
        process, parent = body.get("process"), body.get("parent")
        changes: dict[str, Any] = {}
        if isinstance(process, Mapping) and "pod" not in process:
            pod = self._pod_for(process)
            if pod is not None:
                changes["process"] = {**process, "pod": pod}
            elif unresolved_reason and container_id_of(process):
                changes["process"] = {**process, "pod_unresolved": unresolved_reason}
        if isinstance(parent, Mapping) and "pod" not in parent:
            pod = self._pod_for(parent)
            if pod is not None:
                changes["parent"] = {**parent, "pod": pod}
        if not changes:
            return event
        return event.replace(body={**body, **changes})

    @overload
    def __call__(self, events: Event) -> Event: ...
    @overload
    def __call__(self, events: list[Event]) -> list[Event]: ...

    def __call__(self, events: Event | list[Event]) -> Event | list[Event]:
        """A pipeline stage (`sensorium.pipeline.Stage`): a batch goes through `process` (with holding);
        a single event is enriched now, without holding."""
        if isinstance(events, Event):
            return self.enrich(events)
        return self.process(events)

    @property
    def held(self) -> int:
        """Events waiting for their pod (the pipeline's tick releases them when they are due)."""
        return self._n_held

    # ---- batches with hold-and-retry --------------------------------------------------------------

    def process(self, batch: Iterable[Event]) -> list[Event]:
        """Enrich a batch. Events whose container is not known yet are held (and come out of a later
        call); held events that became resolvable or whose time is up come out first, in order."""
        with self._lock:
            now = self._clock()
            out = self._release(now, force=False)
            for ev in batch:
                process = ev.body.get("process")
                cid = container_id_of(process) if isinstance(process, Mapping) else None
                if not cid:
                    self.counts["host_events"] += 1
                    out.append(self.enrich(ev))
                    continue
                if isinstance(process, Mapping) and "pod_unresolved" in process:
                    out.append(ev)  # decided already (released by an earlier call or a flush)
                    continue
                queue = self._held.get(cid)
                if queue is None and isinstance(process, Mapping) and self.pods.synced \
                        and self.pods.container(cid) is None and outside_kubernetes(process):
                    self.counts["non_pod_containers"] += 1
                    out.append(self.enrich(ev, unresolved_reason="not a Kubernetes pod's container "
                                                                 "(no pod in its cgroup path)"))
                    continue
                self.counts["container_events"] += 1
                # Keep per-container order: behind held events of the same container, wait too.
                if queue is None and ((isinstance(process, Mapping) and "pod" in process)
                                      or self.pods.container(cid) is not None):
                    self.counts["with_pod"] += 1
                    out.append(self.enrich(ev))
                    continue
                if self.max_held <= 0:
                    self.counts["released_unresolved"] += 1
                    out.append(self.enrich(ev, unresolved_reason="holding disabled (hold_max_events: 0)"))
                    continue
                if self._n_held >= self.max_held:
                    # Bounded memory: the oldest held event goes out now, without its pod.
                    self.counts["dropped_over_limit"] += 1
                    out.extend(self._pop_oldest(now))
                    queue = self._held.get(cid)  # popping may have emptied (and dropped) this very queue
                if queue is None:
                    queue = self._held[cid] = collections.deque()
                queue.append((now + self.hold_s, ev))
                self._n_held += 1
                self.counts["held"] += 1
            return out

    def flush(self) -> list[Event]:
        """Release every held event now (resolved where possible, else marked): call at shutdown."""
        with self._lock:
            return self._release(self._clock(), force=True)

    def pending(self) -> int:
        return self._n_held

    def stats(self) -> dict[str, int]:
        """The counters (a pipeline stage's ``stats()``: `Pipeline.stats` reports it under ``stages``)."""
        return dict(self.counts)

    def status(self) -> dict[str, Any]:
        total = self.counts["container_events"]
        share = (self.counts["with_pod"] + self.counts["released_resolved"]) / total if total else None
        return {"held_now": self._n_held, "hold_s": self.hold_s, "pod_share": share, **self.counts}

    def _pop_oldest(self, now: float) -> list[Event]:
        cid, queue = next(iter(self._held.items()))
        _, ev = queue.popleft()
        self._n_held -= 1
        if not queue:
            del self._held[cid]
        return [self._finish(cid, ev, now, force=True)]

    def _finish(self, cid: str, ev: Event, now: float, force: bool) -> Event:
        if self.pods.container(cid) is not None:
            self.counts["released_resolved"] += 1
            return self.enrich(ev)
        self.counts["released_unresolved"] += 1
        if not self.pods.synced:
            why = "pod watcher not synced with the API server"
        elif force:
            why = f"container {cid[:12]} not in any pod of this node (released at flush)"
        else:
            why = f"container {cid[:12]} not in any pod of this node after {self.hold_s:g} s"
        return self.enrich(ev, unresolved_reason=why)

    def _release(self, now: float, force: bool) -> list[Event]:
        out: list[Event] = []
        if not self._held:
            return out
        for cid in list(self._held):
            queue = self._held[cid]
            known = self.pods.container(cid) is not None
            # The whole queue goes when its container is known (or forced); otherwise only the events
            # whose deadline passed, from the front, so order within the container holds.
            while queue and (known or force or queue[0][0] <= now):
                _, ev = queue.popleft()
                self._n_held -= 1
                out.append(self._finish(cid, ev, now, force))
            if not queue:
                del self._held[cid]
        return out
