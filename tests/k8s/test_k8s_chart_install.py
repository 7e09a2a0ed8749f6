"""`helm install` of charts/sensorium into the real kube-apiserver (RBAC on), then what it made:
the DaemonSet as the API server stored it, the CRDs established and enforcing their schema, and the
ClusterRole granting exactly what the watchers need (checked by SubjectAccessReview, as the API server
would decide for the agent's service account).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from k8s_env import CACHE, REPO

CHART = REPO / "charts" / "sensorium"
pytestmark = pytest.mark.slow


def _helm(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CACHE / "bin" / "helm"), "--kubeconfig", kubeconfig, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def release(kubeconfig: str, api: Any) -> Iterator[tuple[str, str]]:
    from kubernetes import client

    ns, name = f"sensorium-{uuid.uuid4().hex[:6]}", "sensorium"
    r = _helm(kubeconfig, "install", name, str(CHART), "--namespace", ns, "--create-namespace",
              "-f", str(CHART / "ci" / "syslog-values.yaml"), "--set", f"fullnameOverride={ns}")
    assert r.returncode == 0, r.stdout + r.stderr
    yield ns, name
    _helm(kubeconfig, "uninstall", name, "--namespace", ns)
    # Helm never deletes CRDs (by design: it would delete every policy). Neither does the test: other
    # test sessions may be using them; the API server's etcd is fresh at its next start.
    try:
        client.CoreV1Api(api).delete_namespace(ns)
    except Exception:  # noqa: BLE001
        pass


def test_helm_install_creates_the_agent_objects(release: tuple[str, str], api: Any, kubeconfig: str) -> None:
    from kubernetes import client

    ns, name = release
    ds = client.AppsV1Api(api).read_namespaced_daemon_set(ns, ns)
    spec = ds.spec.template.spec
    assert spec.host_pid and spec.containers[0].security_context.privileged
    assert spec.service_account_name == ns
    assert spec.containers[0].env[0].value_from.field_ref.field_path == "spec.nodeName"
    cms = {c.metadata.name: c for c in client.CoreV1Api(api).list_namespaced_config_map(ns).items}
    assert set(yaml.safe_load(cms[ns].data["agent.yaml"])["exporters"][0]) >= {"type", "address"}
    assert set(cms[f"{ns}-policies"].data) == {"deny-shadow-reads.yaml", "watch-ptrace.yaml"}
    r = _helm(kubeconfig, "status", name, "--namespace", ns, "-o", "json")
    assert '"status":"deployed"' in r.stdout.replace(" ", "")


def test_crds_are_established_and_enforce_their_schema(release: tuple[str, str], api: Any) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(api)
    for crd in ("tracingpolicies.sensorium.io", "tracingpoliciesnamespaced.sensorium.io"):
        import time

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            conds = {c.type: c.status for c in (ext.read_custom_resource_definition(crd).status.conditions or [])}
            if conds.get("Established") == "True":
                break
            time.sleep(0.2)
        assert conds.get("Established") == "True", conds
    co = client.CustomObjectsApi(api)
    policy = yaml.safe_load((CHART / "policies" / "watch-sensitive-files.yaml").read_text())
    try:
        made = co.create_cluster_custom_object("sensorium.io", "v1alpha1", "tracingpolicies", policy)
        assert made["spec"]["tracepoints"][0]["event"] == "sys_enter_openat"  # sections kept as written
        bad = {"apiVersion": "sensorium.io/v1alpha1", "kind": "TracingPolicyNamespaced",
               "metadata": {"name": "bad", "namespace": release[0]},
               "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}}}
        with pytest.raises(ApiException) as ei:
            co.create_namespaced_custom_object("sensorium.io", "v1alpha1", release[0], "tracingpoliciesnamespaced", bad)
        assert ei.value.status == 422 and "Near" in ei.value.body
    finally:
        try:
            co.delete_cluster_custom_object("sensorium.io", "v1alpha1", "tracingpolicies", policy["metadata"]["name"])
        except ApiException:
            pass


@pytest.mark.parametrize("verb,group,resource,allowed", [
    ("list", "", "pods", True), ("watch", "", "pods", True), ("get", "", "pods", True),
    ("get", "apps", "replicasets", True), ("get", "batch", "jobs", True),
    ("watch", "sensorium.io", "tracingpolicies", True), ("list", "sensorium.io", "tracingpoliciesnamespaced", True),
    ("create", "", "events", True),
    ("delete", "", "pods", False), ("get", "", "secrets", False), ("list", "apps", "replicasets", False),
    ("create", "sensorium.io", "tracingpolicies", False), ("get", "", "nodes", False),
    ("update", "", "pods", False), ("create", "", "pods", False),
])
def test_service_account_has_the_least_rights(release: tuple[str, str], api: Any, verb: str, group: str,
                                              resource: str, allowed: bool) -> None:
    from kubernetes import client

    ns, _ = release
    review = client.AuthorizationV1Api(api).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{ns}:{ns}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": "default"}}})
    assert review.status.allowed is allowed, (verb, group, resource, review.status.reason)
