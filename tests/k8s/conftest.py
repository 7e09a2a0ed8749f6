"""Fixtures of the Kubernetes tests: a real kube-apiserver + etcd, a real containerd, and the test kubelet.

The binaries come from scripts/k8s/setup.sh (make setup runs it; 7 to 15 minutes the first time, then
cached). Without them the tests are skipped with that reason; under CI=true, once scripts/setup.sh runs
the k8s setup, they fail instead: a skip there would hide a broken install step.
Services that a test session starts are stopped at its end; ones already running are reused and left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # k8s_env, k8s_kubelet

from k8s_env import CACHE, NODE, REPO, RUN, SCRIPTS, wait_for  # noqa: E402


def _setup_wired() -> bool:
    """Whether `make setup` runs scripts/k8s/setup.sh (then a missing piece in CI is a failure)."""
    try:
        return "k8s/setup.sh" in (REPO / "scripts" / "setup.sh").read_text()
    except OSError:
        return False


def _missing(what: str) -> None:
    msg = f"{what} is missing: run scripts/k8s/setup.sh (make setup does)"
    if os.environ.get("CI") and _setup_wired():
        pytest.fail(msg)
    pytest.skip(msg)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _use(service: str) -> None:
    """Count this test session as a user of a shared service (several sessions may run at once)."""
    d = RUN / f"users-{service}"
    d.mkdir(parents=True, exist_ok=True)
    (d / str(os.getpid())).touch()


def _last_user(service: str) -> bool:
    """Drop this session from the users; True when no other live session uses the service."""
    d = RUN / f"users-{service}"
    (d / str(os.getpid())).unlink(missing_ok=True)
    others = []
    for f in d.iterdir():
        if f.name.isdigit() and _pid_alive(int(f.name)):
            others.append(f.name)
        else:
            f.unlink(missing_ok=True)
    return not others


def _locked(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    """Run a start/stop script under one lock, so concurrent sessions never start or stop twice."""
    RUN.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["flock", "-o", "-w", str(timeout), str(RUN / "lock"), "bash", str(SCRIPTS / script), *args],
                          capture_output=True, text=True, timeout=timeout + 60)



def _shared_service(service: str) -> Iterator[str]:
    """Start ``service`` (apiserver or containerd) with start-<service>.sh unless another session runs it;
    yield what the script prints last (the kubeconfig path, the CRI endpoint); stop it after the last user."""
    _use(service)
    r = _locked(f"start-{service}.sh")
    if r.returncode != 0:
        _last_user(service)
        pytest.fail(f"start-{service}.sh failed: {r.stderr[-2000:]}")
    yield r.stdout.strip().splitlines()[-1]
    if _last_user(service):
        _locked("stop.sh", f"--{service}-only")


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("the Kubernetes tests run etcd, kube-apiserver and containerd: root needed")
    if not (CACHE / "bin" / "kube-apiserver").exists():
        _missing("kube-apiserver")
    yield from _shared_service("apiserver")


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> Any:
    from sensorium.k8s.watcher import api_client

    return api_client(kubeconfig)


@pytest.fixture(scope="session")
def cri_endpoint() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    for tool in ("containerd", "runc", "ctr", "gcc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            _missing(tool)
    yield from _shared_service("containerd")


@pytest.fixture
def kubelet(api: Any, cri_endpoint: str) -> Iterator[Any]:
    from k8s_kubelet import Kubelet

    k = Kubelet(api, cri_endpoint, NODE)
    yield k
    k.close()


@pytest.fixture
def namespace(api: Any) -> Iterator[str]:
    """A fresh namespace (deleted at the end; there is no namespace controller, so its pods are deleted
    by the kubelet fixture and the namespace object itself here)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture
def watcher(api: Any) -> Iterator[Any]:
    from sensorium.k8s.watcher import PodWatcher

    w = PodWatcher(api, NODE, watch_timeout_s=30, deleted_grace_s=2.0).start()
    assert w.wait_synced(45), w.status()
    yield w
    w.stop()


@pytest.fixture
def crds(kubeconfig: str, api: Any) -> Iterator[None]:
    from kubernetes import client

    r = subprocess.run([str(CACHE / "bin" / "kubectl"), "--kubeconfig", kubeconfig, "apply",
                        "-f", str(REPO / "charts" / "sensorium" / "crds")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ext = client.ApiextensionsV1Api(api)
    for name in ("tracingpolicies.sensorium.io", "tracingpoliciesnamespaced.sensorium.io"):
        wait_for(lambda name=name: any(c.type == "Established" and c.status == "True"
                          for c in (ext.read_custom_resource_definition(name).status.conditions or [])),
              what=f"{name} established")
    yield


