"""Container id and pod uid from cgroup paths: every runtime and driver format (pure parsing).

The same parsing is checked against the real /proc/<pid>/cgroup of real containers in
test_k8s_resolution.py; here the formats that this host's containerd does not produce.
"""

from __future__ import annotations

import pytest

from sensorium.k8s.containerid import (
    container_id_from_cgroup_path,
    container_id_from_proc_cgroup,
    pod_uid_from_cgroup_path,
    strip_runtime_prefix,
)

CID = "3f1c8a9e0b7d4e2f8a6c5b4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f"
UID = "0e9c2a1b-5a5d-4c1e-9b1e-2f3c4d5e6f70"
UID_ = UID.replace("-", "_")

FORMATS = [
    ("containerd cgroupfs v2", f"0::/kubepods/besteffort/pod{UID}/{CID}"),
    ("containerd cgroupfs v1 memory", f"4:memory:/kubepods/besteffort/pod{UID}/{CID}"),
    ("containerd cgroupfs guaranteed", f"/kubepods/pod{UID}/{CID}"),
    ("containerd systemd", f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"),
    ("containerd systemd burstable", f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"),
    ("containerd systemd nested (kind)", f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"),
    ("cri-o", f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope"),
    ("cri-o below the scope", f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container"),
    ("systemd init.scope inside", f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope"),
    ("k3s cgroupfs nested", f"0::/k3s/kubepods/besteffort/pod{UID}/{CID}"),
]


@pytest.mark.parametrize("name,path", FORMATS, ids=[f[0] for f in FORMATS])
def test_container_id_of_kubernetes_formats(name: str, path: str) -> None:
    assert container_id_from_cgroup_path(path) == CID
    assert pod_uid_from_cgroup_path(path) == UID


@pytest.mark.parametrize("path", [
    f"/docker/{CID}",
    f"/system.slice/docker-{CID}.scope",
    f"12:pids:/system.slice/docker-{CID}.scope",
    f"/machine.slice/libpod-{CID}.scope",
    f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
])
def test_container_id_of_docker_and_podman(path: str) -> None:
    assert container_id_from_cgroup_path(path) == CID
    assert pod_uid_from_cgroup_path(path) is None


@pytest.mark.parametrize("path", [
    None, "", "/", "0::/", "/user.slice/user-0.slice/session-3.scope", "/system.slice/containerd.service",
    f"/kubepods/besteffort/pod{UID}",  # the pod's own cgroup: no container
    "/kubepods/besteffort/pod" + UID + "/" + CID[:63],  # 63 hex: not an id
    "/kubepods/besteffort/pod" + UID + "/" + CID.upper(),  # ids are lower-case hex
    f"/machine.slice/libpod-conmon-{CID}.scope",  # podman's monitor, not the container
    f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope",  # CRI-O's monitor
    "/" + "a" * 4096,
])
def test_no_container_id(path: str | None) -> None:
    assert container_id_from_cgroup_path(path) is None


def test_deepest_id_wins() -> None:
    other = "f" * 64
    assert container_id_from_cgroup_path(f"/docker/{other}/docker/{CID}") == CID


def test_whole_proc_cgroup_prefers_v2_line() -> None:
    other = "e" * 64
    text = f"4:memory:/kubepods/besteffort/pod{UID}/{other}\n0::/kubepods/besteffort/pod{UID}/{CID}\n"
    assert container_id_from_proc_cgroup(text) == CID
    assert container_id_from_proc_cgroup("0::/\n1:name=systemd:/init.scope\n") is None


def test_runtime_prefix_stripped() -> None:
    for rt in ("containerd", "cri-o", "docker"):
        assert strip_runtime_prefix(f"{rt}://{CID}") == CID
    assert strip_runtime_prefix(CID) == CID
