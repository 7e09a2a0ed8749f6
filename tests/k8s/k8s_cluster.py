"""The real single-node cluster of scripts/k8s/cluster.sh, for the tests: up/down, kubectl and helm on it,
and the agent's events read the two ways a user reads them (``kubectl logs``, the file exporter's file)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s_env import CACHE, REPO, SCRIPTS

CLUSTER_SH = SCRIPTS / "cluster.sh"
CHART = REPO / "charts" / "sensorium"
VALUES = CHART / "ci" / "cluster-values.yaml"
RUN = Path(os.environ.get("SENSORIUM_CLUSTER_RUN", "/run/sensorium-cluster"))
SOCK = RUN / "containerd.sock"
EXPORT = Path("/var/lib/sensorium-cluster/export/events.log")  # the file exporter's path in cluster-values.yaml
TEST_IMAGE = "docker.io/sensorium/test:1"
BINARIES = ("kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager", "kubectl", "helm")


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} ... exit {r.returncode}: {(r.stderr or r.stdout)[-3000:]}")
    return r


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class Cluster:
    kubeconfig: str
    started_here: bool
    up_seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([str(CACHE / "bin" / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
                   timeout=timeout, check=check, input=input)

    def helm(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(CACHE / "bin" / "helm"), "--kubeconfig", self.kubeconfig, *args], timeout=timeout, check=check)

    def apply(self, doc: dict[str, Any] | str) -> None:
        self.kubectl("apply", "-f", "-", input=doc if isinstance(doc, str) else json.dumps(doc))

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.get("pods", "-n", namespace, "-l", selector)["items"]

    def logs(self, namespace: str, pod: str) -> list[dict[str, Any]]:
        r = self.kubectl("logs", "-n", namespace, pod, "-c", "agent", timeout=60, check=False)
        return list(json_lines(r.stdout))

    def exec(self, namespace: str, target: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.kubectl("exec", "-n", namespace, target, "--", *cmd, timeout=timeout, check=False)


class LogTail:
    """`kubectl logs -f` of a pod in a thread, each JSON line kept with the wall time it arrived."""

    def __init__(self, cluster: Cluster, namespace: str, pod: str) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._p = subprocess.Popen([str(CACHE / "bin" / "kubectl"), "--kubeconfig", cluster.kubeconfig, "logs", "-f",
                                    "-n", namespace, pod, "-c", "agent", "--tail=0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self._p.stdout is not None
        for line in self._p.stdout:
            for ev in json_lines(line):
                self.lines.append((time.time(), ev))

    def first(self, pred: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in list(self.lines) if pred(e)), None)

    def close(self) -> None:
        self._p.terminate()
        try:
            self._p.wait(5)
        except subprocess.TimeoutExpired:
            self._p.kill()
        self._t.join(5)


def json_lines(text: str) -> Iterable[dict[str, Any]]:
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def exported_events() -> list[dict[str, Any]]:
    try:
        return list(json_lines(EXPORT.read_text()))
    except OSError:
        return []


def cluster_up() -> Cluster:
    was_up = run(["bash", str(CLUSTER_SH), "status"], check=False, timeout=60).returncode == 0
    t0 = time.monotonic()
    r = run(["bash", str(CLUSTER_SH), "up"], timeout=900, check=False)
    if r.returncode != 0:
        raise AssertionError(f"cluster.sh up failed: {r.stderr[-3000:]}")
    return Cluster(r.stdout.strip().splitlines()[-1], started_here=not was_up, up_seconds=time.monotonic() - t0)


def cluster_down() -> str:
    r = run(["bash", str(CLUSTER_SH), "down"], timeout=600, check=False)
    return r.stderr


def deployment(namespace: str, name: str, command: list[str], labels: dict[str, str] | None = None,
               volumes: list[dict[str, Any]] | None = None,
               mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    sel = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": sel},
                 "template": {"metadata": {"labels": sel},
                              "spec": {"terminationGracePeriodSeconds": 0,
                                       "volumes": volumes or [],
                                       "containers": [{"name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never",
                                                       "command": command, "volumeMounts": mounts or []}]}}},
    }
