"""A scoped policy's scope, decided from the pod an event names.

In the kernel a scoped policy's hooks check the task's cgroup against the cgroups of the pods (and the
host) the policy selects (docs/policies.md, "Scope"). A recorded event names its pod (Tetragon's
``process.pod``: namespace, labels, container name), filled by the Kubernetes stage; an event without one
is the host's. The same selection is made here on those fields, with Kubernetes' label selector rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def label_selector_matches(sel: Any, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels ANDed with matchExpressions; an empty one matches all)."""
    for k, v in (sel.matchLabels or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.matchExpressions or ():
        have = e.key in labels
        if e.operator == "In" and not (have and labels[e.key] in e.values):
            return False
        if e.operator == "NotIn" and have and labels[e.key] in e.values:
            return False
        if e.operator == "Exists" and not have:
            return False
        if e.operator == "DoesNotExist" and have:
            return False
    return True


def scope_test(policy: Any) -> Callable[[dict[str, Any]], bool] | None:
    """``body -> in scope?`` for a scoped policy; None for a host-wide one."""
    if not policy.scoped:
        return None
    namespaced = policy.kind == "TracingPolicyNamespaced"
    pods = policy.pod_selector is not None or policy.container_selector is not None or namespaced

    def in_scope(body: dict[str, Any]) -> bool:
        proc = body.get("process")
        pod = proc.get("pod") if isinstance(proc, dict) else None
        if not isinstance(pod, dict) or not pod.get("name"):
            return bool(policy.host_selector)
        if not pods:
            return False
        if namespaced and pod.get("namespace") != policy.namespace:
            return False
        labels = pod.get("pod_labels") or {}
        if policy.pod_selector is not None and not label_selector_matches(policy.pod_selector, labels):
            return False
        container = pod.get("container") or {}
        if policy.container_selector is not None and not label_selector_matches(
                policy.container_selector, {"name": container.get("name", "")}):
            return False
        return True
    return in_scope


__all__ = ["label_selector_matches", "scope_test"]
