"""The Helm chart (charts/sensorium): lint, render with the default and real-world values files, validate
every object against the Kubernetes schemas offline (kubernetes-validate, strict: unknown fields fail),
and check that the agent config and the policies it ships are what the agent itself accepts.

Helm 3 comes from scripts/k8s/install-deps.sh (cached under /var/cache/sensorium-k8s/bin). Installing
into a real API server is in tests/k8s/test_k8s_chart_install.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "sensorium"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CACHE = Path(os.environ.get("SENSORIUM_K8S_CACHE", "/var/cache/sensorium-k8s"))
# The oldest and newest schemas kubernetes-validate ships, and one between.
K8S_VERSIONS = ("1.25.0", "1.30.0", "1.37.0")


def _helm() -> str:
    for cand in (CACHE / "bin" / "helm", shutil.which("helm")):
        if cand and Path(cand).exists():
            return str(cand)
    setup = REPO / "scripts" / "setup.sh"
    wired = "k8s/setup.sh" in setup.read_text() if setup.exists() else False
    if os.environ.get("CI") and wired:
        pytest.fail("helm is missing: scripts/k8s/setup.sh (make setup) installs it")
    pytest.skip("helm is missing: run scripts/k8s/setup.sh")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, check=check, timeout=60)


_RENDERED: dict[str, str] = {}


def render(values: Path | None = None) -> list[dict[str, Any]]:
    """The chart rendered (fresh objects each call: tests may change them)."""
    key = str(values)
    if key not in _RENDERED:
        args = ["template", "sensorium", str(CHART), "--namespace", "sensorium", "--include-crds"]
        if values is not None:
            args += ["-f", str(values)]
        _RENDERED[key] = helm(*args).stdout
    return [d for d in yaml.safe_load_all(_RENDERED[key]) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


CASES = [None, *CI_VALUES]
IDS = ["default", *[p.stem for p in CI_VALUES]]


def test_ci_values_files_exist() -> None:
    assert len(CI_VALUES) >= 3, "charts/sensorium/ci/ should hold the real-world values files"


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    r = helm(*args, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_rendered_objects_validate_against_kubernetes_schemas(values: Path | None) -> None:
    import kubernetes_validate as kv

    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "ConfigMap", "CustomResourceDefinition"} <= kinds
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus operator's CRD: not in the Kubernetes schemas (checked below)
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")


def test_schema_validation_is_not_vacuous() -> None:
    import kubernetes_validate as kv

    ds = by_kind(render(), "DaemonSet")[0]
    ds["spec"]["template"]["spec"]["hostPIDs"] = True  # a typo must fail strict validation
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, K8S_VERSIONS[-1], strict=True)


def _agent_config(docs: list[dict[str, Any]]) -> str:
    [cm] = [d for d in by_kind(docs, "ConfigMap") if "agent.yaml" in d.get("data", {})]
    return cm["data"]["agent.yaml"]


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_configmap_is_a_config_the_agent_accepts(values: Path | None, tmp_path: Path) -> None:
    """The rendered agent.yaml passes the agent's own validation: the config model (unknown keys
    refused) and each exporter's options model, as `sensorium run` would load it."""
    from sensorium.config import load_config, validate_exporter_options
    from sensorium.plugins import PluginRegistry

    text = _agent_config(render(values))
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    cfg = load_config(f)
    assert cfg.kubernetes.enabled is True
    assert cfg.api.socket == Path("/var/run/sensorium/api.sock")
    assert "node_name" not in yaml.safe_load(text), "node_name must come from NODE_NAME (downward API)"
    reg = PluginRegistry(None, []).discover()
    for i, item in enumerate(cfg.exporters):
        spec = reg.exporters[item.type]
        validate_exporter_options(item, i, spec.options, cfg.source)
    assert cfg.plugins.allow, "the chart must set a plugin allowlist (the agent runs as root)"


def test_values_config_keys_reach_the_agent_unchanged() -> None:
    docs = render(CHART / "ci" / "kafka-values.yaml")
    cfg = yaml.safe_load(_agent_config(docs))
    kafka = cfg["exporters"][0]
    assert kafka["type"] == "kafka" and kafka["sasl"]["password_file"] == "/etc/sensorium/kafka/password"
    assert kafka["filters"]["rate_limit"] == {"events": 50000, "interval_s": 60}
    assert cfg["process_cache"]["max_size"] == 262144
    assert cfg["metrics"] == {"enabled": True, "address": "0.0.0.0", "port": 2112, "bpf_stats": False}


def test_a_wrong_config_key_is_refused_by_the_agent(tmp_path: Path) -> None:
    """The chart passes config through as it is, so a typo reaches the agent, which names it."""
    from sensorium.config import load_config
    from sensorium.yamlsrc import SourceError

    bad = tmp_path / "values.yaml"
    bad.write_text("config:\n  process_cache:\n    max_sise: 10\n")
    f = tmp_path / "agent.yaml"
    f.write_text(_agent_config(render(bad)))
    with pytest.raises(SourceError, match="max_sise"):
        load_config(f)


@pytest.mark.parametrize("values", [v for v in CI_VALUES if "polic" in v.read_text()], ids=lambda p: p.stem)
def test_shipped_policies_are_policies_the_agent_accepts(values: Path) -> None:
    from sensorium.plugins import PluginRegistry
    from sensorium.policy import parse_policies

    docs = render(values)
    [cm] = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-policies")]
    assert cm["data"], "no policy shipped"
    reg = PluginRegistry(None, []).discover()
    names = []
    for fname, text in cm["data"].items():
        names += [p.name for p in parse_policies(text, fname, reg)]
    assert len(names) == len(cm["data"])
    ds = by_kind(docs, "DaemonSet")[0]
    mounts = {m["mountPath"] for m in ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/etc/sensorium/policies" in mounts
    assert yaml.safe_load(_agent_config(docs))["policies"] == {"directory": "/etc/sensorium/policies"}


def test_bad_policy_name_fails_the_render(tmp_path: Path) -> None:
    v = tmp_path / "v.yaml"
    v.write_text("policies:\n  Bad_Name: {}\n")
    r = helm("template", "x", str(CHART), "-f", str(v), check=False)
    assert r.returncode != 0 and "policies.Bad_Name" in r.stderr


def test_daemonset_has_what_the_agent_needs() -> None:
    ds = by_kind(render(), "DaemonSet")[0]
    pod = ds["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert pod["hostPID"] is True
    assert c["securityContext"]["privileged"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/btf", "/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup", "/procHost",
                 "/var/log/sensorium", "/var/run/sensorium"):
        assert path in mounts, path
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["proc"]["hostPath"]["path"] == "/proc"
    assert c["livenessProbe"]["exec"]["command"] == ["sensorium-probe", "live"]
    assert c["readinessProbe"]["exec"]["command"] == ["sensorium-probe", "ready"]
    assert c["resources"]["limits"]["memory"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 2112, "protocol": "TCP"}]


def test_cluster_role_is_the_least_the_watchers_need() -> None:
    [role] = by_kind(render(), "ClusterRole")
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules[("", "pods")] == ["get", "list", "watch"]
    assert rules[("apps", "replicasets")] == ["get"]
    assert rules[("batch", "jobs")] == ["get"]
    assert rules[("sensorium.io", "tracingpolicies")] == ["get", "list", "watch"]
    assert rules[("", "events")] == ["create", "patch"]
    for (group, res), verbs in rules.items():
        assert res not in ("secrets", "configmaps", "*") and "*" not in verbs, (group, res, verbs)
        assert not ({"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(verbs))


def test_crds_define_both_policy_kinds() -> None:
    crds = {d["spec"]["names"]["kind"]: d for d in by_kind(render(), "CustomResourceDefinition")}
    assert crds["TracingPolicy"]["spec"]["scope"] == "Cluster"
    assert crds["TracingPolicyNamespaced"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        assert crd["spec"]["group"] == "sensorium.io"
        [v] = crd["spec"]["versions"]
        assert v["name"] == "v1alpha1" and v["storage"] and "status" in v["subresources"]


def test_service_monitor_only_when_asked() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    [sm] = by_kind(render(CHART / "ci" / "production-values.yaml"), "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    docs = render(CHART / "ci" / "production-values.yaml")
    [svc] = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9464
    ds = by_kind(docs, "DaemonSet")[0]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "4b0f3a1e9c2d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "sensorium-agent"
    assert not by_kind(docs, "ServiceAccount")


def test_minimal_values_drop_metrics_and_export_dir() -> None:
    docs = render(CHART / "ci" / "minimal-values.yaml")
    assert not by_kind(docs, "Service")
    c = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "ports" not in c
    assert "/var/log/sensorium" not in {m["mountPath"] for m in c["volumeMounts"]}
    assert yaml.safe_load(_agent_config(docs))["metrics"]["enabled"] is False


def test_dockerfile_builds_in_the_probes() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "COPY scripts/k8s/probe.py /usr/local/bin/sensorium-probe" in text
    assert (REPO / "scripts" / "k8s" / "probe.py").exists()


def test_persistent_enforcement_keeps_its_state_on_the_node() -> None:
    """config.enforcement.persist: the state directory is a hostPath at the same path (API policies survive
    the pod), the pins live in the bpf hostPath (Bidirectional: a bpffs the agent mounts reaches the node)."""
    docs = render(CHART / "ci" / "persist-values.yaml")
    spec = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    assert {"name": "state", "hostPath": {"path": "/var/lib/sensorium-state", "type": "DirectoryOrCreate"}} \
        in spec["volumes"]
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["state"]["mountPath"] == "/var/lib/sensorium-state"
    assert mounts["bpf"] == {"name": "bpf", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"}
    enf = yaml.safe_load(_agent_config(docs))["enforcement"]
    assert enf == {"persist": True, "state_dir": "/var/lib/sensorium-state", "pin_dir": "/sys/fs/bpf/sensorium",
                   "non_persistent": "serve"}
    default = by_kind(render(), "DaemonSet")[0]["spec"]["template"]["spec"]
    assert "state" not in {v["name"] for v in default["volumes"]}


def test_pins_outside_the_bpf_mount_fail_the_render(tmp_path: Path) -> None:
    v = tmp_path / "v.yaml"
    v.write_text("config:\n  enforcement:\n    persist: true\n    pin_dir: /var/pins\n")
    r = helm("template", "x", str(CHART), "-f", str(v), check=False)
    assert r.returncode != 0 and "config.enforcement.pin_dir: must be under /sys/fs/bpf" in r.stderr, r.stderr
