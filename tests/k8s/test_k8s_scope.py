"""Pod-scoped policies, the Kubernetes half: selectors -> the cgroup2 directories of the selected real
containers, kept current as pods come, change labels and go."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

import pytest

from sensorium.k8s.scope import LabelSelector, PodScope, ScopeTracker, cgroup2_root


@pytest.mark.parametrize("doc,labels,want", [
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}, {"tier": "edge"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}, {"tier": "db"}, False),
    ({"matchExpressions": [{"key": "debug", "operator": "Exists"}]}, {"debug": ""}, True),
    ({"matchExpressions": [{"key": "debug", "operator": "DoesNotExist"}]}, {"debug": "1"}, False),
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "v", "operator": "In", "values": ["2"]}]},
     {"app": "web", "v": "1"}, False),
])
def test_label_selector_semantics(doc: dict, labels: dict, want: bool) -> None:
    assert LabelSelector.parse(doc).matches(labels) is want


@pytest.mark.parametrize("doc,msg", [
    ({"matchLabel": {}}, "unknown key 'matchLabel'"),
    ({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}, "matchExpressions[0].operator"),
    ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "In needs at least one value"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "Exists takes no values"),
    ({"matchLabels": {"a": 1}}, "matchLabels"),
])
def test_bad_selectors_are_refused_naming_the_field(doc: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        LabelSelector.parse(doc, "spec.podSelector")


def _wait(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _cgroup2_dir_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        rel = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
    return os.path.join(cgroup2_root(), rel.lstrip("/"))


@pytest.mark.slow
def test_scope_follows_labels_and_pods(kubelet: Any, api: Any, watcher: Any, namespace: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    web = kubelet.run_pod(namespace, "web", {"app": "web"},
                          containers={"main": ["/bin/sleep", "3600"], "proxy": ["/bin/sleep", "3601"]})
    db = kubelet.run_pod(namespace, "db", {"app": "db"})
    other_ns = f"o-{uuid.uuid4().hex[:6]}"
    elsewhere = kubelet.run_pod(other_ns, "web", {"app": "web"})
    for p in (web, db, elsewhere):
        for c in p.containers.values():
            _wait(lambda: watcher.container(c.id), what=f"{p.name}/{c.name}")

    updates: list[list[str]] = []
    scope = PodScope(namespace=namespace, pod_selector=LabelSelector.parse({"matchLabels": {"app": "web"}}))
    t = ScopeTracker(watcher, scope, on_update=updates.append)
    try:
        want = {_cgroup2_dir_of(c.pid) for c in web.containers.values()}
        assert set(t.current()) == want  # the real cgroups of the web pod's processes, not db's, not the other ns
        assert updates[-1] == sorted(want)

        # db gets the label: it joins; web loses it: it leaves.
        core.patch_namespaced_pod("db", namespace, {"metadata": {"labels": {"app": "web"}}})
        _wait(lambda: _cgroup2_dir_of(db.containers["main"].pid) in t.current(), what="db joining")
        core.patch_namespaced_pod("web", namespace, {"metadata": {"labels": {"app": "gone"}}})
        _wait(lambda: t.current() == [_cgroup2_dir_of(db.containers["main"].pid)], what="web leaving")

        # A deleted pod leaves the scope at once (its events may still resolve for the grace period).
        kubelet.delete_pod(db)
        _wait(lambda: t.current() == [], what="db deleted")
    finally:
        t.close()

    # containerSelector: only the proxy container of web (labels back to app=web).
    core.patch_namespaced_pod("web", namespace, {"metadata": {"labels": {"app": "web"}}})
    _wait(lambda: watcher.container(web.containers["main"].id).pod_labels.get("app") == "web", what="relabel")
    t2 = ScopeTracker(watcher, PodScope(namespace=namespace,
                                        pod_selector=LabelSelector.parse({"matchLabels": {"app": "web"}}),
                                        container_selector=LabelSelector.parse({"matchLabels": {"name": "proxy"}})))
    try:
        assert t2.current() == [_cgroup2_dir_of(web.containers["proxy"].pid)]
    finally:
        t2.close()
    # No namespace (a cluster-wide TracingPolicy): both namespaces' web pods.
    t3 = ScopeTracker(watcher, PodScope(pod_selector=LabelSelector.parse({"matchLabels": {"app": "web"}})))
    try:
        assert _cgroup2_dir_of(elsewhere.containers["main"].pid) in t3.current()
        assert len(t3.current()) == 3
    finally:
        t3.close()
