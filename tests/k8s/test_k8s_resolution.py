"""Container -> pod resolution against a real kube-apiserver and real containers on this node.

The test plays the kubelet (k8s_kubelet.py): Pod objects in the API server, real pod sandboxes and
containers in containerd (runc, real cgroups at /kubepods/besteffort/pod<uid>/<id>), status patched with
the container ids. Processes are started inside the containers (CRI ExecSync = runc exec) and the
cgroup path each one reads from its own /proc/self/cgroup is what the resolver is given.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from sensorium.events import Event
from sensorium.k8s.containerid import container_id_from_proc_cgroup, pod_uid_from_cgroup_path
from sensorium.k8s.enrich import Enricher

pytestmark = pytest.mark.slow


def _owner(api_version: str, kind: str, obj: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": obj.metadata.name, "uid": obj.metadata.uid,
            "controller": True, "blockOwnerDeletion": True}


def _deployment_rs(api: Any, ns: str, name: str) -> Any:
    """A Deployment and its ReplicaSet (owner ref to the Deployment), as the controllers would make."""
    from kubernetes import client

    apps = client.AppsV1Api(api)
    sel = {"matchLabels": {"app": name}}
    tmpl = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "main", "image": "x"}]}}
    dep = apps.create_namespaced_deployment(ns, {"metadata": {"name": name},
                                                 "spec": {"selector": sel, "template": tmpl}})
    return apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": f"{name}-5d8f7c9b6d", "ownerReferences": [_owner("apps/v1", "Deployment", dep)]},
        "spec": {"selector": sel, "template": tmpl}})


def _cronjob_job(api: Any, ns: str, name: str) -> Any:
    from kubernetes import client

    batch = client.BatchV1Api(api)
    tmpl = {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "x"}]}}
    # batch/v1beta1 is the CronJob version of this 1.20 API server (batch/v1 from 1.21).
    cron = client.CustomObjectsApi(api).create_namespaced_custom_object("batch", "v1beta1", ns, "cronjobs", {
        "apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": tmpl}}}})

    class _Obj:
        class metadata:  # shaped like a client object for _owner
            pass

    o = _Obj()
    o.metadata.name, o.metadata.uid = cron["metadata"]["name"], cron["metadata"]["uid"]
    return batch.create_namespaced_job(ns, {
        "metadata": {"name": f"{name}-29399460", "ownerReferences": [_owner("batch/v1beta1", "CronJob", o)]},
        "spec": {"template": tmpl}})


def _exec_event(kubelet: Any, pod: Any, container: str = "main") -> tuple[str, Event]:
    """Run `cat /proc/self/cgroup` inside the container; build the event a sensor would emit for it
    (process with the cgroup path the kernel reported for that very process)."""
    code, out = kubelet.exec(pod, container, ["/bin/cat", "/proc/self/cgroup"])
    assert code == 0, out
    v2 = next(line.split(":", 2)[2] for line in out.splitlines() if line.startswith("0::"))
    mem = next(line.split(":", 2)[2] for line in out.splitlines() if ":memory:" in line)
    body = {"process": {"exec_id": uuid.uuid4().hex, "pid": 1 << 30, "binary": "/bin/cat",
                        "arguments": "/proc/self/cgroup", "cgroup": {"path": v2, "memory_path": mem}},
            "parent": {"exec_id": uuid.uuid4().hex, "pid": pod.containers[container].pid, "binary": "/bin/sleep",
                       "cgroup": {"path": v2}}}
    return out, Event("process_exec", body, "sensorium-test-node", time.time_ns())


def test_exec_in_two_pods_resolves_to_the_right_pod(kubelet: Any, api: Any, watcher: Any) -> None:
    ns_a, ns_b = f"shop-{uuid.uuid4().hex[:6]}", f"batch-{uuid.uuid4().hex[:6]}"
    kubelet.ensure_namespace(ns_a)
    kubelet.ensure_namespace(ns_b)
    rs = _deployment_rs(api, ns_a, "web")
    job = _cronjob_job(api, ns_b, "report")
    web = kubelet.run_pod(ns_a, "web-5d8f7c9b6d-x7k2p", {"app": "web", "tier": "front"},
                          owner_references=[_owner("apps/v1", "ReplicaSet", rs)])
    rep = kubelet.run_pod(ns_b, "report-29399460-q8z4m", {"job": "report"},
                          containers={"worker": ["/bin/sleep", "3600"], "sidecar": ["/bin/sleep", "3601"]},
                          owner_references=[_owner("batch/v1", "Job", job)])
    enricher = Enricher(watcher, hold_s=10)

    def wait_known(cid: str) -> None:
        deadline = time.monotonic() + 10
        while watcher.container(cid) is None and time.monotonic() < deadline:
            time.sleep(0.05)

    for pod, cname, ns, labels, workload, kind in (
        (web, "main", ns_a, {"app": "web", "tier": "front"}, "web", "Deployment"),
        (rep, "worker", ns_b, {"job": "report"}, "report", "CronJob"),
        (rep, "sidecar", ns_b, {"job": "report"}, "report", "CronJob"),
    ):
        out, ev = _exec_event(kubelet, pod, cname)
        cid = container_id_from_proc_cgroup(out)
        assert cid == pod.containers[cname].id
        assert pod_uid_from_cgroup_path(ev.process["cgroup"]["path"]) == pod.uid
        wait_known(cid)
        [got] = enricher.process([ev]) or enricher.process([])
        p = got.process["pod"]
        assert (p["namespace"], p["name"]) == (ns, pod.name)
        assert p["pod_labels"] == labels
        assert (p["workload"], p["workload_kind"]) == (workload, kind)
        c = p["container"]
        assert c["id"] == f"containerd://{cid}" and c["name"] == cname
        assert c["image"] == {"name": "docker.io/sensorium/test:1", "id": pod.containers[cname].image_ref}
        assert c["start_time"] == pod.containers[cname].started_at
        # The parent (the container's main process, still alive) carries the pod too, with its pid in
        # the container's pid namespace (its init: 1).
        assert got.parent["pod"]["name"] == pod.name
        assert got.parent["pod"]["container"]["pid"] == 1
        info = watcher.container(cid)
        assert info.pod_uid == pod.uid

    # The host's view of each container's main process resolves the same way (v1 and v2 lines).
    for pod in (web, rep):
        for cname, c in pod.containers.items():
            text = open(f"/proc/{c.pid}/cgroup").read()
            assert container_id_from_proc_cgroup(text) == c.id
            assert watcher.container(c.id).container_name == cname
    assert enricher.status()["pod_share"] == 1.0


@pytest.mark.parametrize("kind,api_version,workload", [
    ("StatefulSet", "apps/v1", "db"), ("DaemonSet", "apps/v1", "node-agent"), (None, None, "lonely"),
])
def test_workload_of_statefulset_daemonset_and_bare_pod(kubelet: Any, watcher: Any, namespace: str, kind: str | None,
                                                        api_version: str | None, workload: str) -> None:
    owners = [{"apiVersion": api_version, "kind": kind, "name": workload, "uid": str(uuid.uuid4()),
               "controller": True}] if kind else None
    pod = kubelet.run_pod(namespace, f"{workload}-0" if kind else workload, {"w": workload}, owner_references=owners)
    cid = pod.containers["main"].id
    deadline = time.monotonic() + 10
    while watcher.container(cid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    info = watcher.container(cid)
    assert (info.workload, info.workload_kind) == (workload, kind or "Pod")


def test_workload_falls_back_to_the_naming_rule_when_the_owner_is_gone(kubelet: Any, watcher: Any,
                                                                        namespace: str) -> None:
    """A ReplicaSet that cannot be read (deleted, or RBAC forbids): the Deployment name from its name."""
    owners = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7c9d8b6f5",
               "uid": str(uuid.uuid4()), "controller": True}]
    pod = kubelet.run_pod(namespace, "api-7c9d8b6f5-abcde", {"app": "api"}, owner_references=owners)
    deadline = time.monotonic() + 10
    while watcher.container(pod.containers["main"].id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    info = watcher.container(pod.containers["main"].id)
    assert (info.workload, info.workload_kind) == ("api", "Deployment")


def test_event_is_held_until_the_pod_status_names_its_container(kubelet: Any, watcher: Any, namespace: str) -> None:
    """The first exec of a container comes before the kubelet writes the id into the pod status: the
    event waits for it (not sent without its pod), in order with the container's later events."""
    pod = kubelet.run_pod(namespace, "late", {"app": "late"}, patch_status=False)
    enricher = Enricher(watcher, hold_s=20)
    _, ev1 = _exec_event(kubelet, pod)
    _, ev2 = _exec_event(kubelet, pod)
    assert enricher.process([ev1]) == []
    assert enricher.process([ev2]) == []  # behind ev1: same container, still unknown
    assert enricher.pending() == 2
    t0 = time.monotonic()
    kubelet.patch_status(pod)
    out: list[Event] = []
    while len(out) < 2 and time.monotonic() - t0 < 10:
        out += enricher.process([])
        time.sleep(0.02)
    delay = time.monotonic() - t0
    assert [e.process["exec_id"] for e in out] == [ev1.process["exec_id"], ev2.process["exec_id"]]
    assert all(e.process["pod"]["name"] == "late" for e in out)
    assert "pod_unresolved" not in out[0].process
    assert delay < 5, f"released {delay:.2f} s after the status patch"


def test_event_of_an_unknown_container_goes_out_marked_after_the_hold(kubelet: Any, watcher: Any,
                                                                      namespace: str) -> None:
    """A container that no pod of this node names (e.g. started outside Kubernetes): held for hold_s,
    then sent without a pod, saying why."""
    pod = kubelet.run_pod(namespace, "ghost", {"app": "ghost"}, patch_status=False)
    enricher = Enricher(watcher, hold_s=0.5)
    _, ev = _exec_event(kubelet, pod)
    host_ev = Event("process_exec", {"process": {"exec_id": "h", "pid": 1, "binary": "/sbin/init",
                                                 "cgroup": {"path": "/init.scope"}}}, "n", time.time_ns())
    first = enricher.process([ev, host_ev])
    assert [e.process["exec_id"] for e in first] == ["h"]  # host processes are never held
    time.sleep(0.6)
    [out] = enricher.process([])
    assert "pod" not in out.process
    assert "not in any pod of this node after 0.5 s" in out.process["pod_unresolved"]
    assert enricher.status()["released_unresolved"] == 1


def test_flush_releases_everything_held(kubelet: Any, watcher: Any, namespace: str) -> None:
    pod = kubelet.run_pod(namespace, "flushme", {}, patch_status=False)
    enricher = Enricher(watcher, hold_s=60)
    _, ev = _exec_event(kubelet, pod)
    assert enricher.process([ev]) == []
    [out] = enricher.flush()
    assert "released at flush" in out.process["pod_unresolved"]
    assert enricher.pending() == 0


def test_container_outside_kubernetes_is_not_held(watcher: Any, cgroup2_dir: Any) -> None:
    """A Docker-style container cgroup (no pod in its path): no pod will ever claim it, so its events
    pass at once, saying why they carry no pod."""
    import os
    import subprocess

    cid = uuid.uuid4().hex + uuid.uuid4().hex
    scope = os.path.join(os.fspath(cgroup2_dir), f"docker-{cid}.scope")
    os.mkdir(scope)
    proc = subprocess.Popen(["/bin/sleep", "30"])
    try:
        with open(os.path.join(scope, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        path = next(line.split(":", 2)[2].strip() for line in open(f"/proc/{proc.pid}/cgroup")
                    if line.startswith("0::"))
        assert path.endswith(f"docker-{cid}.scope")
        ev = Event("process_exec", {"process": {"exec_id": "d", "pid": proc.pid, "binary": "/bin/sleep",
                                                "cgroup": {"path": path}}}, "n", time.time_ns())
        enricher = Enricher(watcher, hold_s=30)
        [out] = enricher.process([ev])
        assert "pod" not in out.process
        assert "not a Kubernetes pod's container" in out.process["pod_unresolved"]
        assert enricher.pending() == 0
    finally:
        proc.kill()
        proc.wait()
        os.rmdir(scope)


def test_held_events_are_bounded_and_none_is_lost(watcher: Any) -> None:
    """Past hold_max_events the oldest held event goes out at once (marked); every event comes out once."""
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2

    def ev(i: int) -> Event:
        return Event("process_exec", {"process": {"exec_id": str(i), "pid": 1 << 30,
                                                  "cgroup": {"path": f"/kubepods/besteffort/pod{uid}/{cid}"}}},
                     "n", time.time_ns())

    enricher = Enricher(watcher, hold_s=60, max_held=2)
    out = enricher.process([ev(1), ev(2)]) + enricher.process([ev(3)]) + enricher.process([ev(4)])
    assert [e.process["exec_id"] for e in out] == ["1", "2"]
    assert enricher.held == 2 and enricher.status()["dropped_over_limit"] == 2
    rest = enricher.flush()
    assert [e.process["exec_id"] for e in rest] == ["3", "4"]
    assert all("pod_unresolved" in e.process for e in out + rest)


def test_the_pipeline_reports_the_enrichers_counters() -> None:
    """The agent's `status` (and so the chart's probes) asks every stage for ``stats()``: with Kubernetes on,
    the enricher is one of them (it once had a dict there, and `status` failed in every agent pod)."""
    from sensorium.pipeline import Pipeline

    class NoPods:
        synced = True

        def container(self, container_id: str) -> None:
            return None

    st = Pipeline(stages=[Enricher(NoPods(), hold_s=1)]).stats()
    assert st["stages"]["Enricher"]["held"] == 0 and st["stages"]["Enricher"]["container_events"] == 0
