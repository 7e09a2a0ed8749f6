"""The pod watcher against a real kube-apiserver: node scoping, deletes, 410 Gone and API server outages.

Every recovery keeps the pod cache: lookups answer throughout, and no agent restart is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest
from k8s_env import NODE, RUN, SCRIPTS, wait_for

pytestmark = pytest.mark.slow


def test_only_this_nodes_pods_are_watched(kubelet: Any, api: Any, watcher: Any, namespace: str) -> None:
    from kubernetes import client

    mine = kubelet.run_pod(namespace, "mine", {"app": "a"})
    # A pod of another node (no containers run for it here; only its object and status exist).
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, {"metadata": {"name": "theirs"}, "spec": {
        "nodeName": "some-other-node", "containers": [{"name": "main", "image": "x"}]}})
    other_id = "f" * 64
    core.patch_namespaced_pod_status("theirs", namespace, {"status": {"containerStatuses": [{
        "name": "main", "containerID": f"containerd://{other_id}", "image": "x", "imageID": "x",
        "ready": True, "restartCount": 0, "state": {"running": {}}}]}})
    wait_for(lambda: watcher.container(mine.containers["main"].id), what="own pod")
    time.sleep(0.5)
    assert watcher.container(other_id) is None
    assert all(p["spec"]["nodeName"] == NODE for p in watcher.pods())
    core.delete_namespaced_pod("theirs", namespace, grace_period_seconds=0)


def test_deleted_pod_stays_resolvable_for_the_grace_period(kubelet: Any, watcher: Any, namespace: str) -> None:
    pod = kubelet.run_pod(namespace, "short", {"app": "short"})
    cid = pod.containers["main"].id
    wait_for(lambda: watcher.container(cid), what="pod")
    kubelet.delete_pod(pod)
    time.sleep(0.5)
    assert watcher.container(cid) is not None, "the last events of a deleted pod must still resolve"
    # deleted_grace_s=2 in the fixture; expiry runs on the watcher thread as events or timeouts come.
    kubelet.run_pod(namespace, "tick", {})  # an event on the watch so expiry runs promptly
    wait_for(lambda: watcher.container(cid) is None, timeout=10, what="expiry after the grace period")


def _compact_etcd() -> int:
    """Compact etcd to its current revision (as the API server does every 5 minutes), through etcd's
    own v3 HTTP gateway: older resourceVersions are then gone for good."""
    import base64
    import json
    import urllib.request

    port = int(os.environ.get("SENSORIUM_ETCD_PORT", "23791"))

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    rev = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev


def test_410_gone_relists_without_losing_the_cache(kubelet: Any, watcher: Any, namespace: str) -> None:
    a = kubelet.run_pod(namespace, "before", {"app": "x"})
    wait_for(lambda: watcher.container(a.containers["main"].id), what="pod a")
    lists = watcher.stats["lists"]
    # Resume the watch from a resourceVersion that etcd has compacted away: the API server answers
    # 410 Gone (as it does to any agent that was disconnected for longer than the compaction period).
    old_rv = watcher._rv
    kubelet.run_pod(namespace, "churn", {})  # newer revisions, so the compaction passes old_rv
    wait_for(lambda: watcher._rv != old_rv, what="newer revision")
    time.sleep(0.5)
    _compact_etcd()
    watcher.restart_watch(from_resource_version=old_rv)
    wait_for(lambda: watcher.stats["relists_gone"] >= 1, what="410 Gone")
    assert watcher.container(a.containers["main"].id) is not None  # answered while relisting
    wait_for(lambda: watcher.stats["lists"] > lists, what="relist")
    b = kubelet.run_pod(namespace, "after", {"app": "y"})
    wait_for(lambda: watcher.container(b.containers["main"].id), what="pod b after relist")
    assert watcher.container(a.containers["main"].id).pod_name == "before"


def test_api_server_outage_keeps_the_cache_and_recovers(kubelet: Any, watcher: Any, namespace: str,
                                                         kubeconfig: str) -> None:
    a = kubelet.run_pod(namespace, "survivor", {"app": "s"})
    cid = a.containers["main"].id
    wait_for(lambda: watcher.container(cid), what="pod a")
    pid = int((RUN / "apiserver.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # the outage: etcd keeps the data
    t0 = time.monotonic()
    wait_for(lambda: watcher.stats["errors"] >= 1, timeout=20, what="the watcher noticing the outage")
    assert not watcher.status()["connected"]
    assert watcher.container(cid).pod_name == "survivor"  # still answered from the cache
    time.sleep(1.0)  # a few failed retries (backoff) while down
    r = subprocess.run(["bash", str(SCRIPTS / "start-apiserver.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: watcher.status()["connected"], timeout=30, what="reconnect")
    b = kubelet.run_pod(namespace, "newcomer", {"app": "n"})
    wait_for(lambda: watcher.container(b.containers["main"].id), timeout=15, what="a pod created after the outage")
    assert watcher.container(cid).pod_name == "survivor"
    print(f"outage to recovery: {time.monotonic() - t0:.1f} s; watcher {watcher.status()}")
