#!/usr/bin/env python3
"""Stop and remove every pod sandbox (and so every container) of one containerd, through the CRI.

scripts/k8s/cluster.sh down calls it after the kubelet is stopped: StopPodSandbox makes containerd tear
down each pod's network through CNI and end its shim, which killing processes would not.
Usage: cri_cleanup.py unix:///run/.../containerd.sock      (prints how many sandboxes it removed)
"""

from __future__ import annotations

import sys

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as cri


def remove_all(endpoint: str, timeout: float = 60.0) -> tuple[int, list[str]]:
    rt = cri.RuntimeServiceStub(grpc.insecure_channel(endpoint))
    errors: list[str] = []
    sandboxes = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=timeout).items
    for sb in sandboxes:
        for call, req in ((rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=sb.id)),
                          (rt.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=sb.id))):
            try:
                call(req, timeout=timeout)
            except grpc.RpcError as exc:
                errors.append(f"{sb.metadata.namespace}/{sb.metadata.name}: {exc.code().name} {exc.details()}")
    # Containers outside any sandbox cannot exist under the CRI, but a half-created one can linger.
    for c in rt.ListContainers(pb.ListContainersRequest(), timeout=timeout).containers:
        try:
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=timeout)
        except grpc.RpcError as exc:
            errors.append(f"container {c.id[:12]}: {exc.code().name} {exc.details()}")
    return len(sandboxes), errors


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        n, errors = remove_all(argv[1])
    except grpc.RpcError as exc:
        print(f"CRI at {argv[1]} did not answer: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    for e in errors:
        print(f"could not remove {e}", file=sys.stderr)
    print(f"removed {n} pod sandboxes")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
