"""The pod watcher: this node's pods from the API server, indexed by container id.

One list + watch of ``pods`` with ``fieldSelector=spec.nodeName=<node>`` (an agent never sees other
nodes' pods). The cache survives everything the API server does: a watch that ends is resumed from the
last resourceVersion; 410 Gone relists and swaps the new set in only when the list is complete; an
outage backs off and retries while lookups keep answering from the cache. Deleted pods stay resolvable
for ``deleted_grace_s`` so the last events of a dying container still carry their pod.

Workloads are found by walking owner references (ReplicaSet -> Deployment, Job -> CronJob, StatefulSet,
DaemonSet) on the watcher thread, never on the event path; the owner objects are cached.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from sensorium.k8s.containerid import strip_runtime_prefix

log = logging.getLogger("sensorium.k8s")

__all__ = ["ContainerInfo", "PodWatcher", "WorkloadResolver", "api_client"]


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerInfo:
    """Everything an event needs about the container a process runs in. Immutable."""

    container_id: str  # bare 64-hex id
    runtime_id: str  # as in the pod status, e.g. "containerd://<id>"
    container_name: str
    image_name: str
    image_id: str
    start_time: str | None  # RFC 3339, state.running.startedAt (or terminated.startedAt)
    pod_namespace: str
    pod_name: str
    pod_uid: str
    pod_labels: Mapping[str, str]
    workload: str
    workload_kind: str

    def tetragon_pod(self, pid: int | None = None) -> dict[str, Any]:
        """Tetragon's ``Pod`` object (api/v1/tetragon/tetragon.proto: Pod, Container, Image)."""
        container: dict[str, Any] = {
            "id": self.runtime_id,
            "name": self.container_name,
            "image": {"id": self.image_id, "name": self.image_name},
        }
        if self.start_time:
            container["start_time"] = self.start_time
        if pid is not None:
            container["pid"] = pid
        return {
            "namespace": self.pod_namespace,
            "name": self.pod_name,
            "container": container,
            "pod_labels": dict(self.pod_labels),
            "workload": self.workload,
            "workload_kind": self.workload_kind,
        }


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: in-cluster config when running in a pod (and no kubeconfig is
    given), else the kubeconfig file (``KUBECONFIG`` or ~/.kube/config when None)."""
    import os

    from kubernetes import client, config

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
    else:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return client.ApiClient(cfg)


class _Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410 / ERROR event code 410): relist."""


# ReplicaSet "<deployment>-<pod-template-hash>", Job "<cronjob>-<scheduled minutes>": the names the
# controllers give. Used only when the owner object cannot be read (deleted, or RBAC forbids).
_RS_HASH = re.compile(r"^(.+)-[0-9a-z]{5,10}$")
_CRON_JOB = re.compile(r"^(.+)-\d{8,10}$")
# An owner kind whose own controller is the workload: kind -> (that controller's kind, its name in the owner's).
_PARENTS = {"ReplicaSet": ("Deployment", _RS_HASH), "Job": ("CronJob", _CRON_JOB)}


def shutdown_response(resp: Any) -> None:
    """Wake a read blocked on a streaming response from another thread (close() does not; shutting its
    socket down does)."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class WorkloadResolver:
    """(namespace, owner references) -> (workload name, kind), reading ReplicaSets and Jobs (cached)."""

    def __init__(self, api: Any, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._ttl = ttl_s
        self._clock = clock
        self._owners: dict[tuple[str, str, str], tuple[float, list[dict[str, Any]] | None]] = {}
        self.api_reads = 0
        self.api_errors = 0

    def _owner_refs_of(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]] | None:
        """The ownerReferences of a ReplicaSet or Job, or None when it cannot be read."""
        key = (kind, namespace, name)
        hit = self._owners.get(key)
        now = self._clock()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        from kubernetes.client import AppsV1Api, BatchV1Api

        refs: list[dict[str, Any]] | None
        # With _preload_content=False the client returns the raw HTTP response (its .data is the JSON), not the
        # model object its types promise for these calls.
        resp: Any
        try:
            self.api_reads += 1
            if kind == "ReplicaSet":
                resp = AppsV1Api(self._api).read_namespaced_replica_set(
                    name, namespace, _preload_content=False, _request_timeout=(3, 10))
            else:
                resp = BatchV1Api(self._api).read_namespaced_job(
                    name, namespace, _preload_content=False, _request_timeout=(3, 10))
            obj = orjson.loads(resp.data)
            refs = list((obj.get("metadata") or {}).get("ownerReferences") or [])
        except Exception as exc:  # noqa: BLE001 - 404, 403 or outage: fall back to the naming rule
            self.api_errors += 1
            log.debug("cannot read %s %s/%s: %s", kind, namespace, name, exc)
            refs = None
        if len(self._owners) > 4096:  # bounded: old entries go first (dicts keep insertion order)
            for k in list(self._owners)[:1024]:
                del self._owners[k]
        self._owners[key] = (now, refs)
        return refs

    @staticmethod
    def _controller(refs: list[dict[str, Any]]) -> dict[str, Any] | None:
        for r in refs:
            if r.get("controller"):
                return r
        return refs[0] if refs else None

    def resolve(self, namespace: str, pod_name: str, owner_refs: list[dict[str, Any]]) -> tuple[str, str]:
        owner = self._controller(owner_refs)
        if owner is None:
            return pod_name, "Pod"
        kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
        if kind in _PARENTS:
            parent_kind, parent_name = _PARENTS[kind]
            refs = self._owner_refs_of(kind, namespace, name)
            if refs is None:
                m = parent_name.match(name)
                return (m.group(1), parent_kind) if m else (name, kind)
            up = self._controller(refs)
            if up is not None and up.get("kind") == parent_kind:
                return str(up.get("name", "")), parent_kind
            return name, kind
        # StatefulSet, DaemonSet, ReplicationController, or a custom controller: the owner itself.
        return name, kind or "Pod"


def _containers_of(pod: Mapping[str, Any], workload: str, workload_kind: str) -> list[ContainerInfo]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    out = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            rid = cs.get("containerID") or ""
            cid = strip_runtime_prefix(rid)
            if not cid:
                continue  # not started yet: no id to match
            state = cs.get("state") or {}
            started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
            out.append(ContainerInfo(
                container_id=cid, runtime_id=rid, container_name=str(cs.get("name", "")),
                image_name=str(cs.get("image", "")), image_id=str(cs.get("imageID", "")),
                start_time=started, pod_namespace=str(meta.get("namespace", "")),
                pod_name=str(meta.get("name", "")), pod_uid=str(meta.get("uid", "")),
                pod_labels=labels, workload=workload, workload_kind=workload_kind,
            ))
    return out


class PodWatcher:
    """List + watch this node's pods on a thread; answer container-id lookups from the cache.

    Lookups (`container`, `pod`) are lock-free reads of dicts that the watcher thread replaces
    entry by entry, so the event path never waits for the API server.
    """

    def __init__(self, api: Any, node_name: str, *, watch_timeout_s: int = 300, deleted_grace_s: float = 60.0,
                 backoff_max_s: float = 10.0, resolve_workloads: bool = True,
                 on_change: Callable[[str, ContainerInfo], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not node_name:
            raise ValueError("PodWatcher needs a node name (config node_name or the NODE_NAME env)")
        self.api = api
        self.node_name = node_name
        self.watch_timeout_s = watch_timeout_s
        self.deleted_grace_s = deleted_grace_s
        self.backoff_max_s = backoff_max_s
        self._listeners: list[Callable[[str, ContainerInfo], None]] = [on_change] if on_change else []
        self._pod_listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._clock = clock
        self.workloads = WorkloadResolver(api) if resolve_workloads else None
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod JSON (as the API server sent it)
        self._by_container: dict[str, ContainerInfo] = {}
        self._containers_of_pod: dict[str, list[str]] = {}
        self._deleted: dict[str, float] = {}  # uid -> time deleted (kept for late events)
        self._rv: str | None = None
        self._resume_rv: str | None = None
        self._lock = threading.Lock()  # writers only
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._janitor: threading.Thread | None = None
        self._resp: Any = None
        self.stats: dict[str, int] = {"lists": 0, "relists_gone": 0, "watch_restarts": 0, "errors": 0,
                                      "events": 0, "bookmarks": 0}
        self.last_error: str | None = None
        self.connected = False

    # ---- lookups (any thread) --------------------------------------------------------------------

    def container(self, container_id: str) -> ContainerInfo | None:
        """The container with this id (the full 64-hex id, a ``runtime://id`` form, or a unique prefix
        of at least 12 characters as some runtimes truncate it)."""
        cid = strip_runtime_prefix(container_id)
        info = self._by_container.get(cid)
        if info is not None or len(cid) >= 64 or len(cid) < 12:
            return info
        hits = [v for k, v in list(self._by_container.items()) if k.startswith(cid)]
        return hits[0] if len(hits) == 1 else None

    def containers(self) -> list[ContainerInfo]:
        return list(self._by_container.values())

    def add_listener(self, cb: Callable[[str, ContainerInfo], None]) -> None:
        """``cb("upsert" | "delete", info)`` on the watcher thread for every container seen in a pod
        update (also unchanged ones: cheap to compare) and every container gone."""
        self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[str, ContainerInfo], None]) -> None:
        try:
            self._listeners.remove(cb)
        except ValueError:
            pass

    def add_pod_listener(self, cb: Callable[[str, dict[str, Any]], None]) -> None:
        """``cb("upsert" | "delete", pod)`` on the watcher thread for every pod update (also one with no
        container started yet: pod-scoped policies need the pod before its containers) and every pod
        deleted (at once, not after the grace period)."""
        self._pod_listeners.append(cb)

    def remove_pod_listener(self, cb: Callable[[str, dict[str, Any]], None]) -> None:
        try:
            self._pod_listeners.remove(cb)
        except ValueError:
            pass

    def pod_deleted(self, uid: str) -> bool:
        """Whether the pod is gone from the API server (kept only for the grace period)."""
        return uid in self._deleted

    def _emit_pod(self, what: str, pod: dict[str, Any]) -> None:
        for cb in list(self._pod_listeners):
            try:
                cb(what, pod)
            except Exception:  # a listener bug must not stop the watcher
                log.exception("pod watcher pod listener failed")

    def _emit(self, what: str, infos: list[ContainerInfo]) -> None:
        for cb in list(self._listeners):
            for info in infos:
                try:
                    cb(what, info)
                except Exception:  # a listener bug must not stop the watcher
                    log.exception("pod watcher listener failed")

    def pod(self, uid: str) -> dict[str, Any] | None:
        return self._pods.get(uid)

    def pods(self) -> list[dict[str, Any]]:
        return list(self._pods.values())

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def status(self) -> dict[str, Any]:
        return {"node_name": self.node_name, "synced": self.synced, "connected": self.connected,
                "pods": len(self._pods), "containers": len(self._by_container),
                "resource_version": self._rv, "last_error": self.last_error, **self.stats}

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PodWatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sensorium-k8s-pods", daemon=True)
            self._thread.start()
            # Deleted pods expire on time even while the watch is quiet (its read blocks).
            self._janitor = threading.Thread(target=self._expire_loop, name="sensorium-k8s-expiry", daemon=True)
            self._janitor.start()
        return self

    def _expire_loop(self) -> None:
        period = max(0.2, min(5.0, self.deleted_grace_s / 4))
        while not self._stop.wait(period):
            try:
                self._expire_deleted()
            except Exception:  # never let the janitor die
                log.exception("pod cache expiry failed")

    def restart_watch(self, from_resource_version: str | None = None) -> None:
        """Drop the current watch connection; the watcher resumes from its last resourceVersion (or
        ``from_resource_version``), and relists if the API server says 410 Gone. Returns at once."""
        if from_resource_version is not None:
            self._resume_rv = from_resource_version
        shutdown_response(self._resp)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.restart_watch()
        for t in (self._thread, self._janitor):
            if t is not None:
                t.join(timeout)

    # ---- cache updates (watcher thread) --------------------------------------------------------------

    def _workload(self, pod: Mapping[str, Any]) -> tuple[str, str]:
        meta = pod.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        if self.workloads is None or not refs:
            owner = WorkloadResolver._controller(refs)
            return (str(owner.get("name")), str(owner.get("kind"))) if owner else (str(meta.get("name", "")), "Pod")
        return self.workloads.resolve(str(meta.get("namespace", "")), str(meta.get("name", "")), refs)

    def _upsert(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        if not uid:
            return
        old = self._pods.get(uid)
        # Owner references do not change after creation: walk them once per pod.
        if old is not None and (old.get("metadata") or {}).get("ownerReferences") == \
                (pod.get("metadata") or {}).get("ownerReferences") and "_workload" in old:
            wl = old["_workload"]
        else:
            wl = self._workload(pod)
        pod["_workload"] = wl
        infos = _containers_of(pod, wl[0], wl[1])
        gone: list[ContainerInfo] = []
        with self._lock:
            self._pods[uid] = pod
            self._deleted.pop(uid, None)
            new_ids = [i.container_id for i in infos]
            for cid in self._containers_of_pod.get(uid, []):
                if cid not in new_ids:
                    old_info = self._by_container.pop(cid, None)
                    if old_info is not None:
                        gone.append(old_info)
            for info in infos:
                self._by_container[info.container_id] = info
            self._containers_of_pod[uid] = new_ids
        if self._listeners:
            self._emit("delete", gone)
            self._emit("upsert", infos)
        if self._pod_listeners:
            self._emit_pod("upsert", pod)

    def _mark_deleted(self, uid: str) -> None:
        with self._lock:
            pod = self._pods.get(uid) if uid not in self._deleted else None
            if pod is not None:
                self._deleted[uid] = self._clock()
        if pod is not None and self._pod_listeners:
            self._emit_pod("delete", pod)

    def _expire_deleted(self) -> None:
        now = self._clock()
        gone: list[ContainerInfo] = []
        with self._lock:
            for uid, t in list(self._deleted.items()):
                if now - t >= self.deleted_grace_s:
                    del self._deleted[uid]
                    self._pods.pop(uid, None)
                    for cid in self._containers_of_pod.pop(uid, []):
                        info = self._by_container.pop(cid, None)
                        if info is not None:
                            gone.append(info)
        if gone:
            self._emit("delete", gone)

    # ---- API ---------------------------------------------------------------------------------------------

    def _get(self, query: dict[str, Any], stream: bool, read_timeout: float) -> Any:
        from kubernetes.client import CoreV1Api

        v1 = CoreV1Api(self.api)
        return v1.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}", _preload_content=False,
            _request_timeout=(5, read_timeout), **query)

    def _list(self) -> None:
        """A full, paged list; the cache is replaced only when every page has arrived."""
        pods: list[dict[str, Any]] = []
        cont: str | None = None
        rv = None
        while True:
            q: dict[str, Any] = {"limit": 500}
            if cont:
                q["_continue"] = cont
            resp = self._get(q, stream=False, read_timeout=30)
            body = orjson.loads(resp.data)
            pods.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion")
            cont = meta.get("continue")
            if not cont:
                break
        self.stats["lists"] += 1
        seen = set()
        for p in pods:
            p.setdefault("metadata", {})
            self._upsert(p)
            seen.add(p["metadata"].get("uid"))
        for uid in list(self._pods):
            if uid not in seen:
                self._mark_deleted(uid)
        self._rv = rv
        self._synced.set()

    def _watch(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        if self._resume_rv is not None:
            self._rv, self._resume_rv = self._resume_rv, None
        resp = self._get({"watch": True, "resource_version": self._rv, "allow_watch_bookmarks": True,
                          "timeout_seconds": self.watch_timeout_s},
                         stream=True, read_timeout=self.watch_timeout_s + 30)
        self._resp = resp
        try:
            if resp.status == 410:
                raise _Gone()
            self.connected = True
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                self._handle(line)
                self._expire_deleted()
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass

    def _handle(self, line: str | bytes) -> None:
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("pod watch: undecodable line dropped (%d bytes)", len(line))
            return
        if not isinstance(ev, dict):
            return
        typ, obj = ev.get("type"), ev.get("object") or {}
        if not isinstance(obj, dict):
            return
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise RuntimeError(f"watch error: {obj.get('message') or obj}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if typ == "BOOKMARK":
            self.stats["bookmarks"] += 1
        elif typ in ("ADDED", "MODIFIED"):
            self.stats["events"] += 1
            self._upsert(obj)
        elif typ == "DELETED":
            self.stats["events"] += 1
            uid = (obj.get("metadata") or {}).get("uid")
            if uid:
                self._upsert(obj)  # the final status may carry container ids not seen before
                self._mark_deleted(uid)
                # Listeners (policy scopes) let go at once; lookups keep answering for the grace period.
                self._emit("delete", [self._by_container[c] for c in self._containers_of_pod.get(uid, [])
                                      if c in self._by_container])
        if rv:
            self._rv = rv

    def _run(self) -> None:
        backoff = 0.2
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
                # A watch that ends normally (server timeout) resumes from the last resourceVersion.
                self.stats["watch_restarts"] += 1
                backoff = 0.2
                self._expire_deleted()
            except Exception as exc:  # noqa: BLE001 - outage, timeout, reset or 410: keep the cache
                if isinstance(exc, _Gone) or getattr(exc, "status", None) == 410:
                    self.stats["relists_gone"] += 1
                    log.info("pod watch: resourceVersion %s expired (410 Gone): relisting", self._rv)
                    need_list = True
                    continue
                self._on_error(exc)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.backoff_max_s)
                self._expire_deleted()
                if self._rv is None:
                    need_list = True
        self.connected = False

    def _on_error(self, exc: BaseException) -> None:
        """An outage, timeout or reset: keep the cache, count it, say it once per failure."""
        if self._stop.is_set():
            return
        self.connected = False
        self.stats["errors"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("pod watch: %s; retrying (cache kept: %d pods)", self.last_error, len(self._pods))
