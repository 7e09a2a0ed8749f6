"""The tracepoint sensor against the real kernel: tracefs tracepoints with typed args, raw tracepoints,
in-kernel filtering, refusals and whole-or-nothing loading."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hook_helpers import gone, rig_fixture, string_args

from sensorium.hookspecs import PolicyLoadError
from sensorium_sensors.tracepoint.sensor import TracepointSensor

pytestmark = [pytest.mark.kernel]

rig = rig_fixture(TracepointSensor)


def tp_openat(path: str) -> str:
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: tp-openat}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    message: "watched file opened"
    tags: [observability.filesystem]
    args:
    - {{index: 5, type: int}}
    - {{index: 6, type: string}}
    - {{index: 7, type: int}}
    selectors:
    - matchArgs:
      - {{index: 1, operator: Equal, values: ["{path}"]}}
"""


def test_openat_tracepoint_posts_only_for_one_file(rig, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text("1")
    two.write_text("2")
    h = rig.load(tp_openat(str(one)), "tracepoints")
    subprocess.run(["cat", str(two), str(one)], check=True, capture_output=True)
    subprocess.run(["cat", "one"], cwd=tmp_path, check=True, capture_output=True)  # relative: same file
    evs = rig.events(lambda b: str(one) in string_args(b), wait=0.5)
    assert len(evs) >= 2
    e = evs[0]
    assert e["subsys"] == "syscalls" and e["event"] == "sys_enter_openat"
    assert e["args"][0] == {"int_arg": -100}  # AT_FDCWD
    assert e["policy_name"] == "tp-openat" and e["action"] == "KPROBE_ACTION_POST"
    assert e["message"] == "watched file opened" and e["tags"] == ["observability.filesystem"]
    assert not rig.events(lambda b: str(two) in string_args(b), wait=0.1)
    assert h.status()["hooks"][0]["mechanism"] == "tracepoint"
    assert h.status()["counters"]["filtered"] > 0  # other opens were dropped in the kernel


def test_tracepoint_that_does_not_exist_is_named(rig) -> None:
    text = tp_openat("/x").replace("sys_enter_openat", "sys_enter_nothing_here")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "tracepoints"))
    assert "syscalls/sys_enter_nothing_here does not exist" in str(ei.value)
    assert ei.value.field == "spec.tracepoints[0].event"


def test_arg_index_past_the_format_names_the_fields(rig) -> None:
    text = tp_openat("/x").replace("index: 7, type: int", "index: 12, type: int")
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.check_policy(rig.view(text, "tracepoints"))
    assert "index 12 is past" in str(ei.value) and "6:filename" in str(ei.value)
    assert ei.value.field == "spec.tracepoints[0].args[2].index"


def test_raw_tracepoint_sched_process_exec_reports_the_binary(rig, tmp_path: Path) -> None:
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: rawtp}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    raw: true
    args:
    - {index: 2, type: linux_binprm}
    selectors:
    - matchArgs:
      - {index: 0, operator: Postfix, values: ["/true"]}
"""
    h = rig.load(text, "tracepoints")
    subprocess.run(["/bin/true"], check=True)
    subprocess.run(["/bin/echo", "x"], check=True, capture_output=True)
    evs = rig.events(lambda b: any(a.get("linux_binprm_arg", {}).get("path", "").endswith("/true")
                                   for a in b["args"]))
    assert evs and evs[0]["args"][0]["linux_binprm_arg"]["path"] == os.path.realpath("/bin/true")
    assert not rig.events(lambda b: any("echo" in a.get("linux_binprm_arg", {}).get("path", "")
                                        for a in b["args"]), wait=0.1)
    assert h.status()["hooks"][0]["mechanism"] == "raw_tracepoint"


def test_raw_syscalls_sys_enter_with_syscall64(rig) -> None:
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: raw-syscalls}
spec:
  tracepoints:
  - subsystem: raw_syscalls
    event: sys_enter
    args:
    - {index: 4, type: syscall64}
    selectors:
    - matchArgs:
      - {index: 0, operator: Equal, values: ["39"]}
      matchPIDs:
      - {operator: In, values: [%d]}
""" % os.getpid()
    rig.load(text, "tracepoints")
    os.getpid()  # CPython caches nothing here: a real getpid (39)
    evs = rig.events(lambda b: True)
    assert evs and evs[0]["args"][0] == {"syscall_id": {"id": 39, "abi": "x64"}}
    assert {e["process"]["pid"] for e in evs} == {os.getpid()}


def test_failed_attach_unloads_the_items_already_loaded(rig) -> None:
    """sys_enter_openat is a tracefs event but not a raw tracepoint: the second item's attach fails
    after the first item was loaded and attached; nothing of the section may stay."""
    text = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: half}
spec:
  tracepoints:
  - {subsystem: sched, event: sched_process_exit}
  - {subsystem: syscalls, event: sys_enter_openat, raw: true}
"""
    with pytest.raises(PolicyLoadError) as ei:
        rig.sensor.load_policy(rig.view(text, "tracepoints"))
    assert "tracepoints[1] syscalls/sys_enter_openat" in str(ei.value)
    assert len(rig.ctx.loaded_prog_ids) >= 2  # the first item (and the second) had really been loaded
    assert gone(rig.ctx.loaded_prog_ids)


def test_fd_argument_is_reported_as_its_file(rig, tmp_path: Path) -> None:
    target = tmp_path / "closed-file"
    target.write_text("c")
    rig.load(f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: close-fd}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_close
    args:
    - {{index: 5, type: fd}}
    selectors:
    - matchPIDs:
      - {{operator: In, values: [{os.getpid()}]}}
      matchArgs:
      - {{index: 0, operator: Postfix, values: ["/closed-file"]}}
""", "tracepoints")
    fd = os.open(target, os.O_RDONLY)
    os.close(fd)
    evs = rig.events(lambda b: True, wait=2.0)
    assert [e["args"] for e in evs] == [[{"file_arg": {"path": str(target)}}]]
