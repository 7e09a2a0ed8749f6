"""Policy custom resources go through the one loader: an object from the API server is checked like a file
(limits, strict types, line and field in the refusal), without an API server (the watcher's apply step)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from policy_sensors import default_registry

from sensorium.k8s.policies import PolicyCrdWatcher
from sensorium.policy_manager import PolicyManager

OBJECT: dict[str, Any] = {
    "apiVersion": "sensorium.io/v1alpha1", "kind": "TracingPolicy",
    "metadata": {"name": "crd", "uid": "u1", "generation": 1, "resourceVersion": "7"},
    "spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_openat",
                              "args": [{"index": 1, "type": "string"}]}]},
}


@pytest.fixture
def watcher() -> PolicyCrdWatcher:
    reg, sensors = default_registry()
    return PolicyCrdWatcher(None, PolicyManager(reg, sensors), "node-1", write_status=False, record_events=False)


def applied(watcher: PolicyCrdWatcher, obj: dict[str, Any]) -> tuple[str, ...]:
    watcher._apply("tracingpolicies", obj)
    return watcher.applied[("tracingpolicies", "", obj["metadata"]["name"])][2:]  # type: ignore[return-value]


def test_a_valid_object_loads(watcher: PolicyCrdWatcher) -> None:
    assert applied(watcher, OBJECT) == ("crd", "loaded")


def test_an_object_nested_past_the_limit_is_refused_with_a_clear_error(watcher: PolicyCrdWatcher,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    obj = copy.deepcopy(OBJECT)
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(2000):
        cur["x"] = {}
        cur = cur["x"]
    obj["spec"]["tracepoints"][0]["message"] = deep
    assert applied(watcher, obj) == (None, "error") and watcher.manager.list() == []
    assert "policy TracingPolicy/crd refused: TracingPolicy/crd: spec.tracepoints[0].message.x.x" in caplog.text
    assert "nested deeper than 32 levels" in caplog.text


def test_a_string_for_a_boolean_is_refused_in_an_object_too(watcher: PolicyCrdWatcher,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    obj = copy.deepcopy(OBJECT)
    obj["spec"]["tracepoints"][0]["raw"] = "false"
    assert applied(watcher, obj) == (None, "error")
    assert ("TracingPolicy/crd:12: spec.tracepoints[0].raw: must be a boolean (true or false), not the string "
            "'false'") in caplog.text


def test_an_update_that_is_refused_leaves_the_loaded_version_in_place(watcher: PolicyCrdWatcher,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    assert applied(watcher, OBJECT) == ("crd", "loaded")
    first = watcher.manager.get("crd")
    obj = copy.deepcopy(OBJECT)
    obj["metadata"]["generation"] = 2
    obj["spec"]["tracepoints"][0]["raw"] = "false"
    assert applied(watcher, obj) == ("crd", "error")
    row = watcher.manager.get("crd")
    assert row["state"] == "enabled" and row["id"] == first["id"] and row["added_at"] == first["added_at"]
    assert "(the version loaded before stays loaded)" in caplog.text
    good = copy.deepcopy(OBJECT)
    good["metadata"]["generation"] = 3
    good["spec"]["tracepoints"][0]["event"] = "sys_enter_open"
    assert applied(watcher, good) == ("crd", "loaded")
    assert watcher.manager.get("crd")["sections"] == {"tracepoints": 1} and watcher.manager.names() == ["crd"]
    watcher._forget(("tracingpolicies", "", "crd"))
    assert watcher.manager.names() == []
