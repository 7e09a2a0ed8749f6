"""Policies from the API server: TracingPolicy and TracingPolicyNamespaced custom resources (group
sensorium.io) loaded into the agent's `PolicyManager` live.

Create loads, a spec change (new ``metadata.generation``) replaces (delete, then add: a replacement that
is refused leaves no policy of that name, and says so), delete unloads. Each agent writes its own entry
under ``status.nodes.<node>`` (``state``: loaded | error, ``message``, ``generation``, ``time``) with a
merge patch, so agents on different nodes never overwrite each other, and records a Kubernetes Event on
the policy (``PolicyLoaded`` / ``PolicyRefused``) so ``kubectl describe`` tells the user why.

The same list + watch discipline as the pod watcher: resume on a watch end, relist on 410 Gone (then
reconcile: policies whose object is gone are unloaded), back off while the API server is down; loaded
policies stay loaded through an outage.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

import orjson

from sensorium.k8s.watcher import shutdown_response
from sensorium.policy import POLICY_LIMITS
from sensorium.yamlsrc import dump

log = logging.getLogger("sensorium.k8s")

__all__ = ["PolicyCrdWatcher", "GROUP", "VERSION"]

GROUP, VERSION = "sensorium.io", "v1alpha1"
KINDS = {"tracingpolicies": "TracingPolicy", "tracingpoliciesnamespaced": "TracingPolicyNamespaced"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PolicyCrdWatcher:
    """Watch both policy kinds and apply them to ``manager`` (a `sensorium.policy_manager.PolicyManager`: add,
    replace, delete)."""

    def __init__(self, api: Any, manager: Any, node_name: str, *, watch_timeout_s: int = 300,
                 backoff_max_s: float = 10.0, write_status: bool = True, record_events: bool = True) -> None:
        self.api, self.manager, self.node_name = api, manager, node_name
        self.watch_timeout_s, self.backoff_max_s = watch_timeout_s, backoff_max_s
        self.write_status, self.record_events = write_status, record_events
        # (plural, namespace, name) -> (generation, uid, manager name, state)
        self.applied: dict[tuple[str, str, str], tuple[int, str, str | None, str]] = {}
        self._lock = threading.Lock()  # serializes applying (two kinds, two threads)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._resps: dict[str, Any] = {}
        self.synced = {p: threading.Event() for p in KINDS}
        self.stats: dict[str, int] = {"loaded": 0, "refused": 0, "unloaded": 0, "errors": 0, "relists_gone": 0}
        self.last_error: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PolicyCrdWatcher:
        """Start watching (again, after `stop`: what was loaded is remembered and reconciled by the
        first list, so objects deleted meanwhile are unloaded)."""
        self._stop.clear()
        self._threads = []
        for e in self.synced.values():
            e.clear()
        for plural in KINDS:
            t = threading.Thread(target=self._run, args=(plural,), name=f"sensorium-k8s-{plural}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self.synced.values())

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for resp in list(self._resps.values()):
            shutdown_response(resp)
        for t in self._threads:
            t.join(timeout)

    def status(self) -> dict[str, Any]:
        return {"synced": all(e.is_set() for e in self.synced.values()), "policies": len(self.applied),
                "last_error": self.last_error, **self.stats}

    # ---- applying -----------------------------------------------------------------------------------

    @staticmethod
    def _document(obj: dict[str, Any], src: str | None = None) -> str:
        """The policy as the agent parses it: only apiVersion, kind, metadata (name, namespace, labels,
        annotations) and spec; the server's bookkeeping stays out. Written as YAML text so it goes through
        the one loader and its limits like a file (a `SourceError` for an object nested or sized past them),
        and its errors have lines."""
        meta = obj.get("metadata") or {}
        doc = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
               "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
               "spec": obj.get("spec")}
        return dump(doc, src, POLICY_LIMITS)

    def _apply(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (plural, meta.get("namespace") or "", meta.get("name") or "")
        gen = int(meta.get("generation") or 0)
        prev = self.applied.get(key)
        if prev is not None and prev[0] == gen and prev[1] == meta.get("uid"):
            return  # a status write or metadata change: the policy itself is the same
        src = f"{KINDS[plural]}/{key[1] + '/' if key[1] else ''}{key[2]}"
        # An update of a loaded object is one transaction (`PolicyManager.replace`): the new version is
        # active before the old one goes, and a version that does not load leaves the old one enforcing.
        loaded = prev[2] if prev is not None and prev[1] == str(meta.get("uid")) else None
        if prev is not None and prev[2] is not None and loaded is None:
            self._unload(prev[2])  # another object of the same name (deleted and created again)
        try:
            if loaded is not None:
                names = self.manager.replace(loaded, self._document(obj, src), file=src, origin="crd")
            else:
                names = self.manager.add(self._document(obj, src), file=src, origin="crd")
        except Exception as exc:  # noqa: BLE001 - any refusal is reported on the object, never raised
            msg = str(exc)[:2000]
            if loaded is not None and loaded in self.manager.names():
                msg += " (the version loaded before stays loaded)"
            else:
                loaded = None
            self.applied[key] = (gen, str(meta.get("uid")), loaded, "error")
            self.stats["refused"] += 1
            log.warning("policy %s refused: %s", src, msg)
            self._report(plural, obj, "error", msg, gen)
            return
        self.applied[key] = (gen, str(meta.get("uid")), names[0] if names else None, "loaded")
        self.stats["loaded"] += 1
        self._report(plural, obj, "loaded", f"loaded on node {self.node_name}", gen)

    def _unload(self, name: str) -> None:
        try:
            self.manager.delete(name)
            self.stats["unloaded"] += 1
        except Exception as exc:  # noqa: BLE001 - already gone: nothing to undo
            log.info("policy %s: unload: %s", name, exc)

    def _forget(self, key: tuple[str, str, str]) -> None:
        prev = self.applied.pop(key, None)
        if prev is not None and prev[2] is not None:
            self._unload(prev[2])

    def _report(self, plural: str, obj: dict[str, Any], state: str, message: str, gen: int) -> None:
        meta = obj.get("metadata") or {}
        name, ns = meta.get("name", ""), meta.get("namespace")
        if self.write_status:
            from kubernetes.client import CustomObjectsApi

            body = {"status": {"nodes": {self.node_name: {"state": state, "message": message, "generation": gen,
                                                          "time": _now()}}}}
            try:
                co = CustomObjectsApi(self.api)
                if ns:
                    co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, plural, name, body,
                                                             _request_timeout=(3, 10))
                else:
                    co.patch_cluster_custom_object_status(GROUP, VERSION, plural, name, body, _request_timeout=(3, 10))
            except Exception as exc:  # noqa: BLE001 - the object may be gone already
                log.info("policy %s: status not written: %s", name, exc)
        if self.record_events:
            from kubernetes.client import CoreV1Api

            ev = {
                "metadata": {"generateName": f"{name}.", "namespace": ns or "default"},
                "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[plural], "name": name,
                                   "namespace": ns, "uid": meta.get("uid")},
                "reason": "PolicyLoaded" if state == "loaded" else "PolicyRefused",
                "message": f"{self.node_name}: {message}"[:1024],
                "type": "Normal" if state == "loaded" else "Warning",
                "source": {"component": "sensorium-agent", "host": self.node_name},
                "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
                "reportingComponent": "sensorium-agent", "reportingInstance": self.node_name,
            }
            try:
                # The client sends a plain dict body as it is; its types only name the model class.
                CoreV1Api(self.api).create_namespaced_event(ns or "default", ev,  # type: ignore[arg-type]
                                                            _request_timeout=(3, 10))
            except Exception as exc:  # noqa: BLE001
                log.info("policy %s: event not recorded: %s", name, exc)

    # ---- list + watch -------------------------------------------------------------------------------

    def _call(self, plural: str, **kw: Any) -> Any:
        from kubernetes.client import CustomObjectsApi

        return CustomObjectsApi(self.api).list_cluster_custom_object(
            GROUP, VERSION, plural, _preload_content=False, **kw)

    def _list(self, plural: str) -> str | None:
        resp = self._call(plural, _request_timeout=(5, 30))
        body = orjson.loads(resp.data)
        items = body.get("items") or []
        seen = set()
        with self._lock:
            for obj in items:
                meta = obj.get("metadata") or {}
                key = (plural, meta.get("namespace") or "", meta.get("name") or "")
                seen.add(key)
                self._apply(plural, obj)
            for key in [k for k in self.applied if k[0] == plural and k not in seen]:
                self._forget(key)  # deleted while we were not watching
        self.synced[plural].set()
        return (body.get("metadata") or {}).get("resourceVersion")

    def _watch(self, plural: str, rv: str | None) -> str | None:
        from kubernetes.watch.watch import iter_resp_lines

        resp = self._call(plural, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                          timeout_seconds=self.watch_timeout_s, _request_timeout=(5, self.watch_timeout_s + 30))
        self._resps[plural] = resp
        try:
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                ev = orjson.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if typ in ("ADDED", "MODIFIED"):
                    with self._lock:
                        self._apply(plural, obj)
                elif typ == "DELETED":
                    meta = obj.get("metadata") or {}
                    with self._lock:
                        self._forget((plural, meta.get("namespace") or "", meta.get("name") or ""))
        finally:
            self._resps.pop(plural, None)
        return rv

    def _run(self, plural: str) -> None:
        backoff, rv = 0.2, None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(plural)
                rv = self._watch(plural, rv)
                backoff = 0.2
            except Exception as exc:  # noqa: BLE001 - outage or 410: keep what is loaded, retry
                if self._stop.is_set():
                    break
                if isinstance(exc, _Gone) or getattr(exc, "status", None) == 410:
                    self.stats["relists_gone"] += 1
                    rv = None
                    continue
                if getattr(exc, "status", None) == 404:
                    # The CRDs are not installed (yet): nothing to load; look again now and then.
                    if not self.synced[plural].is_set():
                        log.info("policy CRD %s.%s is not installed: no policy objects to load", plural, GROUP)
                    self.synced[plural].set()
                    self.last_error = f"{plural}: CRD not installed"
                    if self._stop.wait(30.0):
                        break
                    continue
                self.stats["errors"] += 1
                self.last_error = f"{plural}: {type(exc).__name__}: {exc}"[:500]
                log.warning("policy watch: %s; retrying in %.1f s", self.last_error, backoff)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.backoff_max_s)


class _Gone(Exception):
    pass
