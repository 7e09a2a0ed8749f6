"""Policy CRDs watched from the real API server and applied to a real PolicyManager: create loads,
update replaces, delete unloads, and a refused policy says why in its status and in an Event.

The manager's sensors are the policy suite's table sensors (tests/policy_sensors.py: they keep what a
sensor would put in its kernel maps), so this checks the Kubernetes side, not the kernel programs.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import pytest
import yaml
from k8s_env import NODE, REPO, wait_for

sys.path.insert(0, str(REPO / "tests"))

pytestmark = pytest.mark.slow


@pytest.fixture
def manager() -> Any:
    from policy_sensors import default_registry

    from sensorium.policy_manager import PolicyManager

    reg, sensors = default_registry()
    return PolicyManager(reg, sensors)


def _policy(name: str, path: str, kind: str = "TracingPolicy", ns: str | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "charts" / "sensorium" / "policies" / "watch-sensitive-files.yaml").read_text())
    doc["metadata"] = {"name": name, **({"namespace": ns} if ns else {})}
    doc["kind"] = kind
    doc["spec"]["tracepoints"][0]["selectors"][0]["matchArgs"][0]["values"] = [path]
    return doc


def test_policy_crds_load_update_refuse_and_delete(crds: None, api: Any, manager: Any, namespace: str) -> None:
    from kubernetes import client

    from sensorium.k8s.policies import GROUP, VERSION, PolicyCrdWatcher

    co = client.CustomObjectsApi(api)
    name = f"files-{uuid.uuid4().hex[:6]}"
    w = PolicyCrdWatcher(api, manager, NODE, watch_timeout_s=30).start()
    try:
        assert w.wait_synced(15)
        co.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", _policy(name, "/etc/shadow"))
        wait_for(lambda: name in manager.names(), what="loaded")

        def node_status(n: str, plural: str = "tracingpolicies", ns: str | None = None) -> dict[str, Any]:
            obj = (co.get_namespaced_custom_object(GROUP, VERSION, ns, plural, n) if ns
                   else co.get_cluster_custom_object(GROUP, VERSION, plural, n))
            return ((obj.get("status") or {}).get("nodes") or {}).get(NODE) or {}

        assert wait_for(lambda: node_status(name).get("state") == "loaded", what="status loaded")

        # Update: a new spec replaces the loaded policy; a status-only change does not.
        first = manager.get(name)["added_at"]
        co.patch_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name,
                                       {"spec": _policy(name, "/etc/gshadow")["spec"]})
        wait_for(lambda: node_status(name).get("generation") == 2, what="generation 2 applied")
        second = manager.get(name)["added_at"]
        assert second > first and manager.get(name)["file"] == f"TracingPolicy/{name}"
        co.patch_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name,
                                       {"metadata": {"annotations": {"note": "x"}}})
        time.sleep(1)
        assert manager.get(name)["added_at"] == second

        # Refused: a section no running sensor serves. The status and an Event say why.
        bad = f"bad-{uuid.uuid4().hex[:6]}"
        doc = _policy(bad, "/x")
        doc["spec"] = {"uprobes": [{"path": "/bin/true", "symbols": ["main"]}]}
        co.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", doc)
        st = wait_for(lambda: node_status(bad) or None, what="refusal status")
        assert st["state"] == "error" and "uprobes" in st["message"]
        assert bad not in manager.names()
        # The Event is written after the status: wait for it rather than read the list once.
        mine = wait_for(lambda: [e for e in client.CoreV1Api(api).list_namespaced_event("default").items
                                 if e.involved_object.name == bad], what="the refusal's Event")
        assert mine and mine[0].reason == "PolicyRefused" and mine[0].type == "Warning" and "uprobes" in mine[0].message

        # A TracingPolicyNamespaced: this manager has no pod scoping, so it is refused, with the reason.
        nsd = f"ns-{uuid.uuid4().hex[:6]}"
        co.create_namespaced_custom_object(GROUP, VERSION, namespace, "tracingpoliciesnamespaced",
                                           _policy(nsd, "/x", "TracingPolicyNamespaced", namespace))
        st = wait_for(lambda: node_status(nsd, "tracingpoliciesnamespaced", namespace) or None,
                      what="namespaced status")
        assert st["state"] == "error" and "TracingPolicyNamespaced" in st["message"]

        # Delete: unloaded at once.
        co.delete_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name)
        wait_for(lambda: name not in manager.names(), what="unloaded")
        co.delete_cluster_custom_object(GROUP, VERSION, "tracingpolicies", bad)
    finally:
        w.stop()


def test_policies_deleted_while_disconnected_are_unloaded_on_relist(crds: None, api: Any, manager: Any) -> None:
    from kubernetes import client

    from sensorium.k8s.policies import GROUP, VERSION, PolicyCrdWatcher

    co = client.CustomObjectsApi(api)
    name = f"gone-{uuid.uuid4().hex[:6]}"
    co.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", _policy(name, "/etc/shadow"))
    w = PolicyCrdWatcher(api, manager, NODE, watch_timeout_s=30).start()
    assert w.wait_synced(15)
    wait_for(lambda: name in manager.names(), what="loaded from the initial list")
    w.stop()
    co.delete_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name)
    assert name in manager.names()  # nobody watching: still loaded
    w.start()  # reconnects: the first list reconciles what this agent had loaded
    try:
        assert w.wait_synced(15)
        wait_for(lambda: name not in manager.names(), what="unloaded by the relist")
    finally:
        w.stop()
