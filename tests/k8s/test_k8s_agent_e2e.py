"""End to end: the real agent (exec sensor + Kubernetes stage) and two real containers of different pods.

Processes started inside each container (CRI ExecSync = runc exec, so the kernel sees a real execve in
the container's cgroups) must come out of the agent's stdout exporter with the right pod, namespace,
labels, container and workload, and every container event must carry its pod (the share is printed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from k8s_env import NODE, REPO

pytestmark = [pytest.mark.slow, pytest.mark.kernel]


def _owner(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": str(uuid.uuid4()), "controller": True}]


def test_exec_events_from_two_pods_carry_their_pod(agent: Callable[..., Any], kubelet: Any, kubeconfig: str) -> None:
    ns_a, ns_b = f"front-{uuid.uuid4().hex[:6]}", f"data-{uuid.uuid4().hex[:6]}"
    h = agent({
        "node_name": NODE,
        "sensors": {"exec": {"enabled": True}},
        "exporters": [{"type": "stdout"}],
        "kubernetes": {"enabled": True, "kubeconfig": kubeconfig, "hold_s": 5},
    })
    web = kubelet.run_pod(ns_a, "web-0", {"app": "web"}, owner_references=_owner("StatefulSet", "web"))
    db = kubelet.run_pod(ns_b, "db-x1", {"app": "db", "tier": "data"}, owner_references=_owner("DaemonSet", "db"))
    marks = {}
    for pod in (web, db):
        mark = f"m{uuid.uuid4().hex[:10]}"
        marks[mark] = pod
        code, _ = kubelet.exec(pod, "main", ["/bin/sh", "-c", f"/bin/echo {mark}; /bin/true {mark}"])
        assert code == 0

    def exec_of(mark: str) -> Callable[[dict[str, Any]], bool]:
        # echo and true are busybox applets: the binary is /bin/busybox, argv[1:] is the mark alone.
        return lambda ev: "process_exec" in ev and ev["process_exec"]["process"].get("arguments") == mark

    evs = {m: h.wait_for(exec_of(m), timeout=20)["process_exec"] for m in marks}
    for mark, pod in marks.items():
        p = evs[mark]["process"]
        assert "pod" in p, p.get("pod_unresolved")
        assert (p["pod"]["namespace"], p["pod"]["name"]) == (pod.namespace, pod.name)
        assert p["pod"]["pod_labels"] == pod.labels
        assert p["pod"]["container"]["id"] == f"containerd://{pod.containers['main'].id}"
        assert p["pod"]["container"]["name"] == "main"
        assert p["pod"]["workload"] == ("web" if pod is web else "db")
        assert p["pod"]["workload_kind"] == ("StatefulSet" if pod is web else "DaemonSet")
        assert evs[mark]["parent"]["pod"]["name"] == pod.name  # the shell that ran it, same container
    time.sleep(1)
    container_ids = {c.id for pod in (web, db) for c in pod.containers.values()}
    ours = [e for e in h.events() if "process_exec" in e
            and e["process_exec"]["process"].get("docker") in container_ids]
    with_pod = [e for e in ours if "pod" in e["process_exec"]["process"]]
    print(f"container exec events with their pod: {len(with_pod)}/{len(ours)}")
    assert ours and len(with_pod) == len(ours)


def test_policy_objects_load_into_the_agent_live(agent: Callable[..., Any], api: Any, kubeconfig: str,
                                                 crds: None) -> None:
    """A TracingPolicy created in the API server is loaded by the agent (its real tracepoint sensor),
    reported in the object's status, and unloaded when the object is deleted."""
    from kubernetes import client

    from sensorium.api import ApiClient
    from sensorium.k8s.policies import GROUP, VERSION

    h = agent({
        "node_name": NODE,
        "sensors": {"exec": {"enabled": True}, "tracepoint": {"enabled": True}},
        "exporters": [{"type": "stdout"}],
        "kubernetes": {"enabled": True, "kubeconfig": kubeconfig},
    })
    sock = h.config_path.parent / "api.sock"
    co = client.CustomObjectsApi(api)
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    doc = yaml.safe_load((REPO / "charts" / "sensorium" / "policies" / "watch-sensitive-files.yaml").read_text())
    doc["metadata"]["name"] = name
    co.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", doc)
    # One the kernel cannot serve (this kernel has no syscalls/sys_enter_bogus tracepoint): refused by the
    # real sensor, and the object's status says why.
    bad = f"e2e-bad-{uuid.uuid4().hex[:6]}"
    bad_doc = yaml.safe_load(yaml.safe_dump(doc))
    bad_doc["metadata"]["name"] = bad
    bad_doc["spec"]["tracepoints"][0]["event"] = "sys_enter_bogus"
    co.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", bad_doc)

    def loaded() -> bool:
        with ApiClient(sock) as c:
            return any(p["name"] == name and p["state"] == "enabled" for p in c.call("policy.list"))

    def node_status(n: str) -> dict[str, Any]:
        obj = co.get_cluster_custom_object(GROUP, VERSION, "tracingpolicies", n)
        return ((obj.get("status") or {}).get("nodes") or {}).get(NODE) or {}

    def node_state() -> str | None:
        return node_status(name).get("state")

    try:
        deadline = time.monotonic() + 30
        while not loaded() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loaded(), h.stderr_tail()
        deadline = time.monotonic() + 10
        while node_state() != "loaded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node_state() == "loaded"
        deadline = time.monotonic() + 10
        while not node_status(bad) and time.monotonic() < deadline:
            time.sleep(0.2)
        st = node_status(bad)
        assert st.get("state") == "error" and "sys_enter_bogus" in st.get("message", ""), st
    finally:
        co.delete_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name)
        co.delete_cluster_custom_object(GROUP, VERSION, "tracingpolicies", bad)
    deadline = time.monotonic() + 15
    while loaded() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not loaded()
