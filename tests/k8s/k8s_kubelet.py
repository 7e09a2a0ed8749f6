"""The tests play the kubelet: Pod objects in the real API server, real sandboxes and containers in a real
containerd (CRI over gRPC), and the pod status patched with the container ids, as a kubelet would.

Also a command line for scripts/k8s/stop.sh: ``python tests/k8s/k8s_kubelet.py --cleanup unix:///...sock``
removes every sandbox this helper made (label ``sensorium.io/test-kubelet=1``) and their pod cgroups.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as cri

TEST_IMAGE = "docker.io/sensorium/test:1"
TEST_LABEL = "sensorium.io/test-kubelet"
SESSION_LABEL = "sensorium.io/test-session"  # the pid of the test process: sessions clean only their own
CGROUP_ROOT = "/sys/fs/cgroup"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ns_to_rfc3339(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class RunningContainer:
    name: str
    id: str
    pid: int
    image: str
    image_ref: str
    started_at: str


@dataclasses.dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    sandbox_id: str
    labels: dict[str, str]
    containers: dict[str, RunningContainer]

    @property
    def cgroup_parent(self) -> str:
        return f"/kubepods/besteffort/pod{self.uid}"


def remove_pod_cgroups(uid: str) -> None:
    """rmdir the pod's cgroup (and its leftover children) in every hierarchy: the kubelet's job."""
    for hier in os.listdir(CGROUP_ROOT):
        base = f"{CGROUP_ROOT}/{hier}/kubepods/besteffort/pod{uid}"
        if not os.path.isdir(base):
            continue
        for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
    for hier in os.listdir(CGROUP_ROOT):
        for d in (f"{CGROUP_ROOT}/{hier}/kubepods/besteffort", f"{CGROUP_ROOT}/{hier}/kubepods"):
            try:
                os.rmdir(d)  # only when empty: another pod may still be there
            except OSError:
                pass


class Kubelet:
    def __init__(self, api_client: Any, cri_endpoint: str, node_name: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.channel = grpc.insecure_channel(cri_endpoint)
        self.rt = cri.RuntimeServiceStub(self.channel)
        self.images = cri.ImageServiceStub(self.channel)
        self.pods: list[RunningPod] = []

    def ensure_namespace(self, name: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def run_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                containers: dict[str, list[str]] | None = None,
                owner_references: list[dict[str, Any]] | None = None,
                patch_status: bool = True) -> RunningPod:
        """Create the Pod object, run its sandbox and containers, then (unless told not to) patch the
        status with the container ids. Containers default to one ``main`` running ``sleep 3600``."""
        labels = dict(labels or {})
        containers = containers or {"main": ["/bin/sleep", "3600"]}
        self.ensure_namespace(namespace)
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
        if owner_references:
            meta["ownerReferences"] = owner_references
        body = {
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": self.node_name, "hostNetwork": True, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": c, "image": TEST_IMAGE, "command": cmd} for c, cmd in containers.items()]},
        }
        pod = self.core.create_namespaced_pod(namespace, body)
        uid = pod.metadata.uid
        sb_cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            hostname="",  # a hostNetwork sandbox must not set one
            labels={TEST_LABEL: "1", SESSION_LABEL: str(os.getpid()), "io.kubernetes.pod.uid": uid},
            log_directory=f"/var/log/sensorium-k8s-pods/{namespace}_{name}_{uid}",
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"/kubepods/besteffort/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE))),
        )
        sandbox_id = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sb_cfg)).pod_sandbox_id
        running = RunningPod(namespace, name, uid, sandbox_id, labels, {})
        self.pods.append(running)
        for cname, cmd in containers.items():
            cid = self.rt.CreateContainer(pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, sandbox_config=sb_cfg,
                config=pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=cname), image=pb.ImageSpec(image=TEST_IMAGE),
                    command=cmd, log_path=f"{cname}.log", labels={TEST_LABEL: "1"},
                    # pid=CONTAINER as the kubelet sets it (unless shareProcessNamespace): each
                    # container's main process is pid 1 of its own pid namespace.
                    linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                        namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER)))),
            )).container_id
            self.rt.StartContainer(pb.StartContainerRequest(container_id=cid))
            st = self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True))
            pid = int(json.loads(st.info["info"])["pid"])
            running.containers[cname] = RunningContainer(
                cname, cid, pid, TEST_IMAGE, st.status.image_ref, _ns_to_rfc3339(st.status.started_at))
        if patch_status:
            self.patch_status(running)
        return running

    def patch_status(self, pod: RunningPod) -> None:
        statuses = [{
            "name": c.name, "containerID": f"containerd://{c.id}", "image": c.image, "imageID": c.image_ref,
            "ready": True, "restartCount": 0, "started": True, "state": {"running": {"startedAt": c.started_at}},
        } for c in pod.containers.values()]
        self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": _now(),
            "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": statuses}})

    def exec(self, pod: RunningPod, container: str, cmd: list[str], timeout: int = 10) -> tuple[int, str]:
        """Run a process inside the container (CRI ExecSync = runc exec: a real process in its cgroups)."""
        r = self.rt.ExecSync(pb.ExecSyncRequest(container_id=pod.containers[container].id, cmd=cmd, timeout=timeout))
        return r.exit_code, r.stdout.decode(errors="replace")

    def delete_pod(self, pod: RunningPod, delete_object: bool = True) -> None:
        from kubernetes.client.rest import ApiException

        for req in (pb.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id),
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.sandbox_id)):
            try:
                (self.rt.StopPodSandbox if isinstance(req, pb.StopPodSandboxRequest) else self.rt.RemovePodSandbox)(req)
            except grpc.RpcError:
                pass
        remove_pod_cgroups(pod.uid)
        if delete_object:
            try:
                self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        for pod in list(self.pods):
            try:
                self.delete_pod(pod)
            except Exception:  # noqa: BLE001 - best effort; cleanup() below sweeps by label
                pass
        cleanup(self.rt, session=str(os.getpid()))
        self.channel.close()


def cleanup(rt: cri.RuntimeServiceStub, session: str | None = None) -> int:
    """Remove every sandbox this helper made (by label; only one session's when given) and their pod cgroups."""
    n = 0
    sel = {TEST_LABEL: "1"} if session is None else {TEST_LABEL: "1", SESSION_LABEL: session}
    resp = rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector=sel)))
    for sb in resp.items:
        try:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sb.id))
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sb.id))
        except grpc.RpcError:
            pass
        remove_pod_cgroups(sb.metadata.uid)
        n += 1
    return n


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--cleanup":
        ch = grpc.insecure_channel(sys.argv[2])
        print(f"removed {cleanup(cri.RuntimeServiceStub(ch))} test sandboxes")
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
