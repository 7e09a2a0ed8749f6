"""Pod-scoped policies end to end (issue 5's acceptance test): the real agent (exec, lsm and kprobe sensors +
the Kubernetes stage) and real containers of real pods on this node.

A policy selecting pod A's labels blocks connect() to a loopback port (lsmhooks socket_connect, served
here by the cgroup sock_addr fallback) and kills a process opening a chosen file (kprobes sys_openat with
``syscall: true``, served by raw_tp here). In pod A: connect fails with EPERM, the open gets the process
killed; in pod B the same succeed and B's exec events still come out with B's identity. A third matching
pod created after the policy, whose entrypoint opens the file at once, is killed on its first exec (the
window between a pod's creation and its cgroup entering the scope is closed). Deleting the policy lifts
the block at once. The same through the CRD path, with a TracingPolicyNamespaced addressed as ns/name.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from enforcement_helpers import connect_lsmhooks
from k8s_env import NODE, wait_for
from openat_harness import SIGKILL, openat_kprobes

pytestmark = [pytest.mark.slow, pytest.mark.kernel]


@pytest.fixture
def server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that greets and closes (the pods run with hostNetwork)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            with c:
                c.sendall(b"hello\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def policy_text(name: str, label: str, port: int, secret: str, *, kind: str = "TracingPolicy",
                namespace: str | None = None) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"""apiVersion: cilium.io/v1alpha1
kind: {kind}
metadata:
  name: {name}{ns}
spec:
  podSelector:
    matchLabels:
      app: {label}
""" + connect_lsmhooks(port) + openat_kprobes(secret, actions=SIGKILL)


def _connect(kubelet: Any, pod: Any, port: int) -> str:
    _code, out = kubelet.exec(pod, "main", ["/bin/sh", "-c", f"nc 127.0.0.1 {port} </dev/null 2>&1; echo rc=$?"])
    return out


def _open(kubelet: Any, pod: Any, path: str) -> tuple[int, str]:
    return kubelet.exec(pod, "main", ["/bin/cat", path])


def _exit_of(kubelet: Any, cid: str) -> int | None:
    from cri_api.v1 import api_pb2 as pb

    st = kubelet.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status
    return st.exit_code if st.state == pb.CONTAINER_EXITED else None


def _agent_config(kubeconfig: str) -> dict[str, Any]:
    return {"node_name": NODE,
            "sensors": {"exec": {"enabled": True}, "lsm": {"enabled": True}, "kprobe": {"enabled": True}},
            "exporters": [{"type": "stdout"}],
            "kubernetes": {"enabled": True, "kubeconfig": kubeconfig, "hold_s": 5, "policy_crds": True}}


def _check_scoped_enforcement(h: Any, kubelet: Any, ns: str, label: str, port: int, secret: str,
                              key: str, delete: Callable[[], None]) -> None:
    """The acceptance checks, once the policy (``key`` in the agent) is loading or loaded."""
    from sensorium.api import ApiClient

    sock = h.config_path.parent / "api.sock"

    def row() -> dict[str, Any] | None:
        with ApiClient(sock) as c:
            return next((p for p in c.call("policy.list") if p.get("key") == key), None)

    a = kubelet.run_pod(ns, "pod-a", {"app": label})
    b = kubelet.run_pod(ns, "pod-b", {"app": f"{label}-not"})
    for pod in (a, b):  # the file in both containers, written under another name (rename() opens nothing)
        assert kubelet.exec(pod, "main", ["/bin/sh", "-c", f"echo secret-of-{pod.name} > {secret}.w && "
                                                           f"mv {secret}.w {secret}"])[0] == 0
    r = wait_for(lambda: (lambda p: p if p and p["state"] == "enabled" and p["scope"]["cgroups"] else None)(row()),
              timeout=60, what=f"policy {key} loaded with pod A in its scope")
    assert r["scope"]["pods"] == [f"{ns}/pod-a"], r["scope"]
    print(f"scope: {r['scope']}")
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "sensorium"
    out = subprocess.run([str(cli), "policy", "list", "--socket", str(sock)], capture_output=True, text=True,
                         timeout=30).stdout
    assert key in out and f"scope: 1 pods ({ns}/pod-a), {r['scope']['cgroups']} cgroups" in out, out

    # Pod A: connect refused (EPERM), open kills the process.
    out = _connect(kubelet, a, port)
    assert "Operation not permitted" in out and "rc=1" in out, out
    code, out = _open(kubelet, a, secret)
    assert code == 137 and "secret" not in out, (code, out)
    # Pod B, same calls: both succeed, and its exec events carry B's identity.
    mark = f"m{uuid.uuid4().hex[:10]}"
    out = _connect(kubelet, b, port)
    assert "hello" in out and "rc=0" in out, out
    code, out = kubelet.exec(b, "main", ["/bin/sh", "-c", f"cat {secret}; /bin/true {mark}"])
    assert code == 0 and out.strip() == "secret-of-pod-b", (code, out)
    ev = h.wait_for(lambda e: "process_exec" in e and e["process_exec"]["process"].get("arguments") == mark,
                    timeout=20)["process_exec"]["process"]
    assert ev.get("pod", {}).get("name") == "pod-b" and ev["pod"]["namespace"] == ns, ev
    # The kill in A was the policy's, reported with A's container.
    kev = h.wait_for(lambda e: "process_kprobe" in e and e["process_kprobe"].get("action") == "KPROBE_ACTION_SIGKILL"
                     and e["process_kprobe"]["process"].get("docker") == a.containers["main"].id, timeout=20)
    assert kev["process_kprobe"]["policy_name"] == key.rpartition("/")[2]

    # A pod created after the policy, whose entrypoint opens the file at once: killed on its first exec.
    t0 = time.monotonic()
    c = kubelet.run_pod(ns, "pod-c", {"app": label}, containers={"main": ["/bin/cat", secret]})
    started = time.monotonic() - t0
    code = wait_for(lambda: _exit_of(kubelet, c.containers["main"].id), timeout=20, what="pod C's container exit")
    windows = wait_for(lambda: (row() or {}).get("scope", {}).get("new_pod_windows_ms"), timeout=5, what="window")
    print(f"pod C: entrypoint exit code {code} (137 = SIGKILL; an unscoped cat of the missing file exits 1); "
          f"pod created -> container started {started * 1000:.0f} ms; pod cgroup seen -> scope updated {windows} ms")
    assert code == 137

    # Deleting the policy lifts the block at once.
    delete()
    wait_for(lambda: row() is None, timeout=30, what=f"policy {key} gone")
    out = _connect(kubelet, a, port)
    assert "hello" in out and "rc=0" in out, out
    code, out = _open(kubelet, a, secret)
    assert code == 0 and out.strip() == "secret-of-pod-a", (code, out)


def test_pod_scoped_policy_blocks_in_the_selected_pod_only(agent: Callable[..., Any], kubelet: Any, kubeconfig: str,
                                                           server: int) -> None:
    from sensorium.api import ApiClient

    ns, label = f"scope-{uuid.uuid4().hex[:6]}", f"a{uuid.uuid4().hex[:6]}"
    secret = f"/tmp/secret-{uuid.uuid4().hex[:6]}"
    h = agent(_agent_config(kubeconfig))
    sock = h.config_path.parent / "api.sock"
    with ApiClient(sock) as cl:
        assert cl.call("policy.add", {"text": policy_text("scoped", label, server, secret), "file": "scoped.yaml"}) \
            == {"added": ["scoped"]}

    def delete() -> None:
        with ApiClient(sock) as cl:
            cl.call("policy.delete", {"name": "scoped"})

    _check_scoped_enforcement(h, kubelet, ns, label, server, secret, "scoped", delete)


def test_namespaced_policy_object_through_the_crd_path(agent: Callable[..., Any], kubelet: Any, kubeconfig: str,
                                                       api: Any, crds: None, server: int) -> None:
    """A TracingPolicyNamespaced created in the API server: loaded as ``ns/name``, scoped to its namespace's
    selected pods; deleting the object lifts the block."""
    import yaml
    from kubernetes import client

    from sensorium.k8s.policies import GROUP, VERSION

    ns, label = f"crd-{uuid.uuid4().hex[:6]}", f"a{uuid.uuid4().hex[:6]}"
    secret = f"/tmp/secret-{uuid.uuid4().hex[:6]}"
    kubelet.ensure_namespace(ns)
    h = agent(_agent_config(kubeconfig))
    doc = yaml.safe_load(policy_text("scoped", label, server, secret, kind="TracingPolicyNamespaced", namespace=ns))
    doc["apiVersion"] = f"{GROUP}/{VERSION}"
    co = client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(GROUP, VERSION, ns, "tracingpoliciesnamespaced", doc)
    deleted = False

    def delete() -> None:
        nonlocal deleted
        co.delete_namespaced_custom_object(GROUP, VERSION, ns, "tracingpoliciesnamespaced", "scoped")
        deleted = True

    try:
        _check_scoped_enforcement(h, kubelet, ns, label, server, secret, f"{ns}/scoped", delete)
    finally:
        if not deleted:
            co.delete_namespaced_custom_object(GROUP, VERSION, ns, "tracingpoliciesnamespaced", "scoped")


def test_host_selector_alone_applies_to_host_processes_only(agent: Callable[..., Any], kubelet: Any,
                                                          kubeconfig: str, tmp_path: Any) -> None:
    """``hostSelector: {}`` alone: a host process opening the file is killed, a pod's is not."""
    import subprocess

    from sensorium.api import ApiClient

    ns = f"host-{uuid.uuid4().hex[:6]}"
    secret = f"/tmp/secret-{uuid.uuid4().hex[:6]}"
    with open(secret, "w") as f:  # before the policy: this open must not be the one killed
        f.write("host-secret\n")
    try:
        pod = kubelet.run_pod(ns, "pod", {"app": "x"})
        write = f"echo pod-secret > {secret}.w && mv {secret}.w {secret}"
        assert kubelet.exec(pod, "main", ["/bin/sh", "-c", write])[0] == 0
        h = agent(_agent_config(kubeconfig))
        sock = h.config_path.parent / "api.sock"
        text = policy_text("host-only", "unused", 1, secret).replace(
            "  podSelector:\n    matchLabels:\n      app: unused\n", "  hostSelector: {}\n")
        text = text[:text.index("  lsmhooks:")] + text[text.index("  kprobes:"):]
        with ApiClient(sock) as c:
            c.call("policy.add", {"text": text, "file": "host.yaml"})
            [row] = [p for p in c.call("policy.list") if p["key"] == "host-only"]
        assert row["scope"]["host"] and row["scope"]["pods"] == [] and row["scope"]["container_roots"] >= 1, row
        assert subprocess.run(["cat", secret], capture_output=True).returncode == -9
        code, out = _open(kubelet, pod, secret)
        assert code == 0 and out.strip() == "pod-secret", (code, out)
        with ApiClient(sock) as c:
            c.call("policy.delete", {"name": "host-only"})
        assert subprocess.run(["cat", secret], capture_output=True).returncode == 0
    finally:
        os.unlink(secret)
