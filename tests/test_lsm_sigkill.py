"""lsm sensor, last-resort fallback: a hook with no pre-emptive fallback served by the syscalls that reach
it, Sigkill from raw tracepoint sys_enter (the call runs first: the status and events say so)."""

from __future__ import annotations

import os

import pytest
from sensorium_testlib import cgroup2_mount, make_cgroup, v1_memory_mount

from sensorium.scope import scope_of_directories
from sensorium_sensors.lsm.plugin import LsmSensor
from sensorium_sensors.lsm.testing import LsmTestContext, run_in_cgroup, scoped

pytestmark = [pytest.mark.kernel]

if os.geteuid() != 0:
    pytest.skip("needs root (BPF, cgroups)", allow_module_level=True)


def view(body: str, mode: str | None = None):
    from sensorium.hooks.testing import make_policy_view

    text = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: last-resort\nspec:\n  lsmhooks:\n" + body
    return make_policy_view(text, "lsmhooks", policy_id=13, mode=mode)


TASK_KILL = """  - hook: task_kill
    args: [{index: 2, type: int}]
    selectors:
    - matchArgs: [{index: 2, operator: Equal, values: ["10"]}]
      matchActions: [{action: Override, argError: -1}]
"""

UNLINK = """  - hook: path_unlink
    args: [{{index: 1, type: dentry}}]
    selectors:
    - matchArgs: [{{index: 1, operator: Equal, values: ["{path}"]}}]
      matchActions: [{{action: Sigkill}}]
"""


@pytest.fixture
def ctx():
    c = LsmTestContext(config={"force_fallbacks": True})
    if not c.kernel.has("raw_tp"):
        pytest.skip("raw tracepoints do not load here")
    return c


@pytest.fixture
def sensor(ctx):
    s = LsmSensor(ctx)
    s.start()
    yield s
    s.stop()


def _test_cgroup():
    """v1 memory where mounted (the hybrid-host pod layout), else cgroup2."""
    mp, version = v1_memory_mount(), 1
    if mp is None:
        mp, version = cgroup2_mount(), 2
    for c in make_cgroup(mp, version):
        yield os.fspath(c)


@pytest.fixture
def cg():
    yield from _test_cgroup()


@pytest.fixture
def cg_b():
    yield from _test_cgroup()


def test_task_kill_override_is_served_as_sigkill_in_the_cgroup_only(sensor, ctx, cg):
    h = sensor.load_policy(scoped(view(TASK_KILL), cg))
    st = h.status()["hooks"][0]
    assert st["mechanism"] == "sigkill from tracepoint" and "the call runs first" in st["note"]
    r = run_in_cgroup(cg, ["sh", "-c", "sleep 5 & kill -USR1 $!; echo survived"])
    assert r.returncode == -9 and "survived" not in r.stdout
    r = run_in_cgroup(None, ["sh", "-c", "sleep 5 & p=$!; kill -USR1 $p; echo survived"])
    assert r.returncode == 0 and "survived" in r.stdout
    # Other signals inside the cgroup are not selected.
    r = run_in_cgroup(cg, ["sh", "-c", "sleep 5 & kill -TERM $!; echo survived"])
    assert "survived" in r.stdout
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["function_name"] == "task_kill" and ev["args"] == [{"int_arg": 10}]
    assert ev["action"] == "KPROBE_ACTION_SIGKILL" and ev["enforcement"]["mechanism"] == "sigkill from tracepoint"


def test_path_unlink_sigkill_the_call_runs_first(sensor, cg, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("v")
    sensor.load_policy(scoped(view(UNLINK.format(path=victim)), cg))
    r = run_in_cgroup(cg, ["rm", "victim"], cwd=str(tmp_path))  # relative: resolved in the kernel
    assert r.returncode == -9
    # The documented meaning of this fallback: the unlink happened before the kill.
    assert not victim.exists()


def test_monitoring_does_not_kill(sensor, ctx, cg):
    sensor.load_policy(scoped(view(TASK_KILL, mode="monitoring"), cg))
    r = run_in_cgroup(cg, ["sh", "-c", "sleep 5 & kill -USR1 $!; echo survived"])
    assert r.returncode == 0 and "survived" in r.stdout
    ev = ctx.wait_events(lambda e: e.kind == "process_lsm")[0].as_dict()["process_lsm"]
    assert ev["policy_mode"] == "monitoring" and ev["action_taken"] is False


def test_set_scope_moves_the_kill_live(sensor, cg, cg_b):
    h = sensor.load_policy(scoped(view(TASK_KILL), cg))
    usr1 = ["sh", "-c", "sleep 5 & kill -USR1 $!; echo survived"]
    assert run_in_cgroup(cg, usr1).returncode == -9
    assert "survived" in run_in_cgroup(cg_b, usr1).stdout
    h.set_scope(scope_of_directories([cg_b]))
    assert "survived" in run_in_cgroup(cg, usr1).stdout
    assert run_in_cgroup(cg_b, usr1).returncode == -9
