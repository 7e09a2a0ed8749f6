"""The agent as users run it (issue 12): `helm install` of charts/sensorium on a real single-node cluster
(scripts/k8s/cluster.sh: kube-apiserver, controller manager, scheduler and kubelet built from Debian's
source package, containerd + runc, CNI bridge), the agent image built offline (scripts/k8s/agent_image.py)
and imported into the node's containerd.

The DaemonSet's pod must become Ready; a Deployment's pod, scheduled and run by the kubelet, runs commands
and opens a connection; the agent's events, read with `kubectl logs` and from the file exporter on the
node, name its pod, namespace, container, workload and kind, and image. A TracingPolicyNamespaced applied
with kubectl makes open() of a file fail with EPERM in its namespace's pod only; deleting it lifts the
block. `kubectl delete pod` of the agent: the DaemonSet brings it back, and its events still carry pods.

The cluster is brought up for this module and taken down after it (unless it was already up).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from k8s_cluster import (
    BINARIES,
    CHART,
    SOCK,
    VALUES,
    Cluster,
    LogTail,
    cluster_down,
    cluster_up,
    deployment,
    exported_events,
    run,
    wait_for,
)
from k8s_env import CACHE, SCRIPTS

# The first test also brings the cluster up and installs the chart (the image import alone can take a minute).
pytestmark = [pytest.mark.slow, pytest.mark.kernel, pytest.mark.timeout(900)]

RELEASE_NS = "sensorium-e2e"
NODE_IP = "10.213.0.1"  # cluster.sh's node address, on its bridge
# Shared between the workload pods and the agent, at the same path in both: see the policy test.
SHARED = "/var/lib/sensorium-cluster/shared"


def _missing(what: str) -> None:
    msg = f"{what} is missing: run scripts/k8s/setup.sh (make k8s-setup)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("a Kubernetes node needs root")
    for b in BINARIES:
        if not (CACHE / "bin" / b).exists():
            _missing(b)
    if not (CACHE / "agent-image" / "agent-image.tar").exists():
        _missing("the agent image (scripts/k8s/agent_image.py build)")
    # One test session at a time on the cluster (it has one node and the release has one name): another
    # session's module waits here for this one's teardown.
    import fcntl

    lock = open(CACHE / "cluster-test.lock", "w")
    deadline = time.monotonic() + 1200
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.fail("another test session has held the cluster for 20 minutes")
            time.sleep(2)
    try:
        c = cluster_up()
        print(f"cluster up in {c.up_seconds:.1f} s ({'started' if c.started_here else 'already running'})")
        try:
            yield c
        finally:
            if c.started_here:
                cluster_down()
    finally:
        lock.close()


@pytest.fixture(scope="module")
def peers(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The node's rsyslog and a Kafka broker (Tansu) on the bridge address, which the agent's pod reaches;
    the values file that adds their exporters to the agent's config."""
    import json
    import socket

    def free_port() -> int:
        with socket.socket() as so:
            so.bind((NODE_IP, 0))
            return int(so.getsockname()[1])

    d = tmp_path_factory.mktemp("peers")
    env = {**os.environ, "SENSORIUM_PEER_ADDRESS": NODE_IP}
    peers_dir = SCRIPTS.parent / "peers"
    udp, tcp, kport = free_port(), free_port(), free_port()
    run(["bash", str(peers_dir / "rsyslog.sh"), "start", str(d / "rsyslog"), str(udp), str(tcp)], env=env)
    try:
        run(["bash", str(peers_dir / "kafka.sh"), "start", str(d / "kafka"), str(kport)], env=env)
        try:
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": f"{NODE_IP}:{kport}"})
            for f in admin.create_topics([NewTopic("sensorium-events", 1, 1)]).values():
                f.result(15)
            del admin  # its client would log reconnect failures once the broker is stopped
            values = d / "exporters.yaml"
            values.write_text(json.dumps({"config": {
                "plugins": {"allow": ["exec", "lsm", "stdout", "file", "syslog", "kafka"]},
                "exporters": [
                    {"type": "stdout", "format": "json"},
                    {"type": "file", "path": "/var/lib/sensorium-cluster/export/events.log"},
                    {"type": "syslog", "address": f"tcp://{NODE_IP}:{tcp}", "facility": "local4"},
                    {"type": "kafka", "brokers": [f"{NODE_IP}:{kport}"], "topic": "sensorium-events", "key": "pod"},
                ]}}))
            yield {"values": str(values), "syslog_log": d / "rsyslog" / "messages.log",
                   "kafka": f"{NODE_IP}:{kport}"}
        finally:
            run(["bash", str(peers_dir / "kafka.sh"), "stop", str(d / "kafka")], env=env, check=False)
    finally:
        run(["bash", str(peers_dir / "rsyslog.sh"), "stop", str(d / "rsyslog")], env=env, check=False)


@pytest.fixture(scope="module")
def agent(cluster: Cluster, peers: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """helm install with the CI values (+ the peers' exporters); yields the agent pod once Ready (and the
    figures of its start)."""
    # The image as this checkout builds it (seconds when cached: only changed layers are rebuilt).
    r = run([str(SCRIPTS.parents[1] / ".venv" / "bin" / "python"), str(SCRIPTS / "agent_image.py"), "import",
             str(SOCK)], timeout=900)
    print(r.stderr.strip().splitlines()[-1])
    cluster.helm("uninstall", "sensorium", "-n", RELEASE_NS, "--wait", check=False)
    t0 = time.time()
    cluster.helm("install", "sensorium", str(CHART), "-n", RELEASE_NS, "--create-namespace", "-f", str(VALUES),
                 "-f", peers["values"],
                 "--set", f"extraVolumes[0].name=shared,extraVolumes[0].hostPath.path={SHARED},"
                          f"extraVolumes[0].hostPath.type=DirectoryOrCreate,"
                          f"extraVolumeMounts[0].name=shared,extraVolumeMounts[0].mountPath={SHARED}")
    pod = _ready_agent(cluster, timeout=300)
    ready = _condition_time(pod, "Ready")
    started = _parse(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    cluster.figures["agent_install_to_ready_s"] = round(ready - t0, 1)
    cluster.figures["agent_container_start_to_ready_s"] = round(ready - started, 1)
    print(f"agent pod {pod['metadata']['name']}: helm install -> Ready {ready - t0:.1f} s "
          f"(container start -> Ready {ready - started:.1f} s)")
    try:
        yield pod
    finally:
        cluster.helm("uninstall", "sensorium", "-n", RELEASE_NS, "--wait", check=False)
        cluster.kubectl("delete", "namespace", RELEASE_NS, "--wait=true", "--timeout=120s", check=False)


@pytest.fixture(scope="module")
def workloads(cluster: Cluster, agent: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Two namespaces, each with a Deployment `web` whose pod execs a short command every second."""
    suffix = uuid.uuid4().hex[:6]
    names = {"a": f"e2e-a-{suffix}", "b": f"e2e-b-{suffix}"}
    loop = ["/bin/sh", "-c", "while true; do /bin/sleep 1; done"]
    mounts = [{"name": "shared", "mountPath": SHARED}]
    vols = [{"name": "shared", "hostPath": {"path": SHARED, "type": "DirectoryOrCreate"}}]
    created = {}
    # Follow the agent's log from before the first workload exists: the time its first event arrives.
    tail = LogTail(cluster, RELEASE_NS, agent["metadata"]["name"])
    time.sleep(1)
    for ns in names.values():
        cluster.kubectl("create", "namespace", ns)
        created[ns] = time.time()
        cluster.apply(deployment(ns, "web", loop, volumes=vols, mounts=mounts))
    for key, ns in list(names.items()):
        cluster.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=180s", timeout=200)
        names[f"{key}_pod"] = cluster.pods(ns, "app=web")[0]["metadata"]["name"]
        names[f"{key}_created"] = str(created[ns])
    names_any: Any = names
    names_any["tail"] = tail
    try:
        yield names
    finally:
        tail.close()
        for ns in (names["a"], names["b"]):
            r = cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            print(f"teardown: {(r.stdout or r.stderr).strip()}")


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _condition_time(pod: dict[str, Any], kind: str) -> float:
    return next(_parse(c["lastTransitionTime"]) for c in pod["status"]["conditions"] if c["type"] == kind)


def _ready_agent(cluster: Cluster, timeout: float, not_named: str = "") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for p in cluster.pods(RELEASE_NS, "app.kubernetes.io/name=sensorium"):
            if p["metadata"]["name"] == not_named or p["metadata"].get("deletionTimestamp"):
                continue
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []):
                return p
        return None

    try:
        return wait_for(ready, timeout, "the agent pod Ready", every=1.0)
    except AssertionError:
        print(cluster.kubectl("describe", "pods", "-n", RELEASE_NS, check=False).stdout[-4000:])
        for p in cluster.pods(RELEASE_NS, "app.kubernetes.io/name=sensorium"):
            print(cluster.kubectl("logs", "-n", RELEASE_NS, p["metadata"]["name"], "--tail=40", check=False).stdout)
        raise


def _agent_pod(cluster: Cluster) -> str:
    return str(_ready_agent(cluster, 120)["metadata"]["name"])


def _exec_event(events: list[dict[str, Any]], mark: str) -> dict[str, Any] | None:
    for e in events:
        p = e.get("process_exec", {}).get("process", {})
        if p.get("arguments") == mark and "pod" in p:
            return p
    return None


def _check_identity(p: dict[str, Any], ns: str, pod: str) -> None:
    assert p["pod"]["namespace"] == ns and p["pod"]["name"] == pod, p["pod"]
    assert p["pod"]["container"]["name"] == "main"
    assert p["pod"]["container"]["image"]["name"] == "docker.io/sensorium/test:1", p["pod"]["container"]
    assert p["pod"]["container"]["id"].startswith("containerd://")
    assert p["pod"]["workload"] == "web" and p["pod"]["workload_kind"] == "Deployment", p["pod"]
    # The Deployment's label, and the one its ReplicaSet adds to the pods it makes.
    assert p["pod"]["pod_labels"] == {"app": "web", "pod-template-hash": pod.split("-")[1]}, p["pod"]["pod_labels"]


def test_the_agent_runs_as_a_ready_daemonset_pod(cluster: Cluster, agent: dict[str, Any]) -> None:
    ds = cluster.get("daemonset", "-n", RELEASE_NS, "sensorium")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 1, ds["status"]
    assert agent["spec"]["nodeName"] == "sensorium-node" and agent["spec"]["hostPID"] is True
    st = agent["status"]["containerStatuses"][0]
    assert st["ready"] and st["image"] == "docker.io/sensorium/agent:0.1.0", st


def test_workload_events_name_pod_namespace_container_workload_and_image(
        cluster: Cluster, agent: dict[str, Any], workloads: dict[str, str]) -> None:
    ns, pod = workloads["a"], workloads["a_pod"]
    # The figure of the issue: from the workload's start to the first event carrying its pod, as it
    # arrived through `kubectl logs -f` (followed since before the Deployment was created).
    agent_pod = _agent_pod(cluster)
    tail: Any = workloads["tail"]
    t_seen, first = wait_for(lambda: tail.first(
        lambda e: e.get("process_exec", {}).get("process", {}).get("pod", {}).get("name") == pod),
        60, f"a first event of {pod} in kubectl logs -f")
    started = _parse(cluster.pods(ns, "app=web")[0]["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    seen_s = round(t_seen - float(workloads["a_created"]), 2)
    cluster.figures["deployment_created_to_first_enriched_event_seen_s"] = seen_s
    cluster.figures["container_started_to_first_enriched_event_seen_s"] = round(t_seen - started, 2)
    cluster.figures["first_exec_to_its_enriched_event_seen_s"] = round(t_seen - _parse(first["time"]), 2)
    print(f"figures: {cluster.figures}")

    mark = f"m{uuid.uuid4().hex[:10]}"
    r = cluster.exec(ns, "deploy/web", "/bin/echo", mark)
    assert r.returncode == 0 and r.stdout.strip() == mark, r.stderr
    # A connection from the pod to the API server's port on the node.
    r = cluster.exec(ns, "deploy/web", "/bin/sh", "-c", "/bin/nc -w 2 10.213.0.1 26443 </dev/null; echo rc=$?")
    assert "rc=0" in r.stdout, (r.stdout, r.stderr)
    p = wait_for(lambda: _exec_event(cluster.logs(RELEASE_NS, agent_pod), mark), 30,
                 f"the exec of {mark} in kubectl logs")
    _check_identity(p, ns, pod)
    assert p["binary"] == "/bin/busybox"  # the test image's /bin/echo is a link to it
    # The same event through the file exporter, on the node.
    p = wait_for(lambda: _exec_event(exported_events(), mark), 30, f"the exec of {mark} in the exported file")
    _check_identity(p, ns, pod)


def test_syslog_and_kafka_exporters_from_values_deliver(cluster: Cluster, agent: dict[str, Any],
                                                       workloads: dict[str, str], peers: dict[str, Any]) -> None:
    import json

    from confluent_kafka import Consumer

    ns, pod = workloads["b"], workloads["b_pod"]
    consumer = Consumer({"bootstrap.servers": peers["kafka"], "group.id": f"e2e-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 6000})
    consumer.subscribe(["sensorium-events"])
    try:
        mark = f"m{uuid.uuid4().hex[:10]}"
        assert cluster.exec(ns, "deploy/web", "/bin/echo", mark).returncode == 0
        # The pod's echo, not the node's kubectl whose command line also has the mark.
        mark_arg = f'"arguments":"{mark}"'
        # Syslog (RFC 5424 over TCP to the node's rsyslog): the structured data names the pod.
        line = wait_for(lambda: next((ln for ln in (peers["syslog_log"].read_text().splitlines()
                                                     if peers["syslog_log"].exists() else []) if mark_arg in ln), None),
                        60, f"the exec of {mark} in rsyslog")
        assert f'namespace="{ns}"' in line and f'pod="{pod}"' in line, line
        _check_identity(json.loads(line[line.index("{"):])["process_exec"]["process"], ns, pod)

        # Kafka: the event as the message value, keyed by pod.
        def from_kafka() -> dict[str, Any] | None:
            m = consumer.poll(1.0)
            if m is None or m.error() or mark_arg.encode() not in m.value():
                return None
            return {"key": m.key(), "event": json.loads(m.value())}

        got = wait_for(from_kafka, 90, f"the exec of {mark} in Kafka", every=0.0)
        _check_identity(got["event"]["process_exec"]["process"], ns, pod)
        assert got["key"] and pod.encode() in got["key"], got["key"]
    finally:
        consumer.close()


def _policy(name: str, ns: str, path: str) -> str:
    return f"""apiVersion: sensorium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata:
  name: {name}
  namespace: {ns}
spec:
  lsmhooks:
  - hook: file_open
    args:
    - {{index: 0, type: file}}
    selectors:
    - matchArgs:
      - {{index: 0, operator: Equal, values: ["{path}"]}}
      matchActions:
      - {{action: Override, argError: -1}}
"""


def test_a_namespaced_policy_blocks_the_open_in_its_namespace_only(
        cluster: Cluster, agent: dict[str, Any], workloads: dict[str, str]) -> None:
    # The file is on a hostPath both workloads and the agent mount at the same path: the fanotify fallback
    # (no BPF LSM on this host) names files in the agent's own mount namespace (docs/kubernetes.md).
    os.makedirs(SHARED, exist_ok=True)
    secret = f"{SHARED}/secret-{uuid.uuid4().hex[:6]}"
    with open(secret, "w") as f:
        f.write("s3cret\n")
    a, b = workloads["a"], workloads["b"]
    name = f"deny-{uuid.uuid4().hex[:6]}"
    try:
        cluster.apply(_policy(name, a, secret))

        def blocked() -> bool:
            r = cluster.exec(a, "deploy/web", "/bin/cat", secret)
            return r.returncode != 0 and "Operation not permitted" in r.stderr

        wait_for(blocked, 60, f"open({secret}) refused in {a}", every=1.0)
        r = cluster.exec(a, "deploy/web", "/bin/cat", secret)
        assert r.returncode == 1 and "Operation not permitted" in r.stderr and "s3cret" not in r.stdout, r
        r = cluster.exec(b, "deploy/web", "/bin/cat", secret)
        assert r.returncode == 0 and r.stdout == "s3cret\n", r
        # The refusal as an event, naming the pod: fanotify asks while the opener's exec record (started by
        # `kubectl exec`, a moment ago) may still be in the ring; the event waits for it in ProcessJoin
        # instead of taking the cache's entry of the same pid from before the exec (runc, on the host).
        agent_pod = _agent_pod(cluster)
        ev = wait_for(lambda: next((e["process_lsm"] for e in cluster.logs(RELEASE_NS, agent_pod)
                                    if e.get("process_lsm", {}).get("policy_name") == name), None), 30,
                      "the policy's event")
        # The agent writes Tetragon's schema (the chart's default events.format): the policy is named by
        # policy_name (unique to this test), the refusal by Tetragon's action; the namespace and outcome
        # fields are ours (format `extended`, docs/events.md).
        assert ev["args"][0]["file_arg"]["path"] == secret and ev["action"] == "KPROBE_ACTION_OVERRIDE", ev
        assert "policy_namespace" not in ev and "enforcement" not in ev, ev
        assert ev["process"].get("pod", {}).get("namespace") == a, ev["process"]
        assert not ev["process"].get("cache_miss") and "runc" not in ev["process"]["binary"], ev["process"]
    finally:
        cluster.kubectl("delete", "tracingpolicynamespaced", "-n", a, name, "--ignore-not-found", check=False)
    wait_for(lambda: cluster.exec(a, "deploy/web", "/bin/cat", secret).returncode == 0, 60,
             f"open({secret}) allowed again in {a} after the policy's deletion", every=1.0)
    os.unlink(secret)


def test_a_deleted_agent_pod_is_brought_back_and_still_names_pods(
        cluster: Cluster, agent: dict[str, Any], workloads: dict[str, str]) -> None:
    old = _agent_pod(cluster)
    t0 = time.time()
    cluster.kubectl("delete", "pod", "-n", RELEASE_NS, old, "--wait=true", "--timeout=120s", timeout=150)
    gone = time.time()
    new = _ready_agent(cluster, 240, not_named=old)
    ready = _condition_time(new, "Ready")
    cluster.figures["agent_delete_until_gone_s"] = round(gone - t0, 1)
    created_s = round(_parse(new["metadata"]["creationTimestamp"]) - t0, 1)
    cluster.figures["agent_new_pod_created_after_delete_s"] = created_s
    cluster.figures["agent_new_pod_created_to_ready_s"] = round(ready - _parse(new["metadata"]["creationTimestamp"]), 1)
    print(f"figures: {cluster.figures}")
    mark = f"m{uuid.uuid4().hex[:10]}"
    ns = workloads["b"]
    assert cluster.exec(ns, "deploy/web", "/bin/echo", mark).returncode == 0
    p = wait_for(lambda: _exec_event(cluster.logs(RELEASE_NS, new["metadata"]["name"]), mark), 60,
                 f"the exec of {mark} in the new agent's logs")
    _check_identity(p, ns, workloads["b_pod"])
